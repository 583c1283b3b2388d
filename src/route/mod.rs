//! Routing: topic spaces of bindings from patterns to queues.
//!
//! A topic is a sequence of levels. Protocols split their own syntax into
//! levels (MQTT `a/b/c`, AMQP routing key `a.b.c`) and map wildcards onto
//! [`Level::One`] (MQTT `+`, AMQP `*`) and [`Level::Many`] (`#` in both), so
//! one trie serves MQTT subscriptions and AMQP topic, direct (one exact
//! level) and fanout (`#`) bindings alike.

mod trie;

pub use trie::TopicTrie;

/// One level of a binding pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Word(Box<str>),
    /// Exactly one level.
    One,
    /// Zero or more levels; only last in a pattern.
    Many,
}

/// A binding pattern: levels, with wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(pub Vec<Level>);

impl Pattern {
    /// Splits `s` on `sep`, reading `one` and `many` as wildcards when they
    /// are a whole level. `Many` anywhere but last is an error.
    pub fn parse(s: &str, sep: char, one: &str, many: &str) -> Result<Pattern, String> {
        let parts: Vec<&str> = s.split(sep).collect();
        let last = parts.len() - 1;
        let mut out = Vec::with_capacity(parts.len());
        for (i, p) in parts.into_iter().enumerate() {
            out.push(if p == many {
                if i != last {
                    return Err(format!("`{many}` must be the last level of {s:?}"));
                }
                Level::Many
            } else if p == one {
                Level::One
            } else {
                Level::Word(p.into())
            });
        }
        Ok(Pattern(out))
    }

    /// A pattern of one exact level (AMQP direct exchange keys).
    /// Like [`Pattern::parse`], but `many` may stand at any level (AMQP
    /// topic binding keys such as `#.error` or `a.#.z`); MQTT's rule that it
    /// comes last is `parse`'s.
    pub fn parse_many_anywhere(s: &str, sep: char, one: &str, many: &str) -> Pattern {
        Pattern(
            s.split(sep)
                .map(|p| {
                    if p == many {
                        Level::Many
                    } else if p == one {
                        Level::One
                    } else {
                        Level::Word(p.into())
                    }
                })
                .collect(),
        )
    }

    pub fn exact(key: &str) -> Pattern {
        Pattern(vec![Level::Word(key.into())])
    }

    /// A pattern that matches every topic (AMQP fanout).
    pub fn all() -> Pattern {
        Pattern(vec![Level::Many])
    }

    /// The canonical text form used in records: levels joined by `/` with
    /// `+`/`#` for wildcards and `\` escaping `/`, `\` and a whole-level `+`/`#`.
    pub fn to_canonical(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('/');
            }
            match l {
                Level::One => s.push('+'),
                Level::Many => s.push('#'),
                Level::Word(w) => {
                    if &**w == "+" || &**w == "#" {
                        s.push('\\');
                    }
                    for c in w.chars() {
                        if c == '/' || c == '\\' {
                            s.push('\\');
                        }
                        s.push(c);
                    }
                }
            }
        }
        s
    }

    pub fn from_canonical(s: &str) -> Pattern {
        let mut levels = Vec::new();
        let mut cur = String::new();
        let mut escaped_level = false;
        let mut chars = s.chars();
        let flush = |cur: &mut String, escaped: &mut bool, levels: &mut Vec<Level>| {
            let l = match (cur.as_str(), *escaped) {
                ("+", false) => Level::One,
                ("#", false) => Level::Many,
                _ => Level::Word(cur.as_str().into()),
            };
            levels.push(l);
            cur.clear();
            *escaped = false;
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        if cur.is_empty() && (n == '+' || n == '#') {
                            escaped_level = true;
                        }
                        cur.push(n);
                    }
                }
                '/' => flush(&mut cur, &mut escaped_level, &mut levels),
                c => cur.push(c),
            }
        }
        flush(&mut cur, &mut escaped_level, &mut levels);
        Pattern(levels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mqtt_and_amqp_syntax_give_the_same_pattern() {
        assert_eq!(Pattern::parse("a/+/#", '/', "+", "#"), Pattern::parse("a.*.#", '.', "*", "#"));
        assert!(Pattern::parse("a/#/b", '/', "+", "#").is_err());
    }

    proptest! {
        #[test]
        fn canonical_form_roundtrips(levels in proptest::collection::vec(prop_oneof![
            Just(Level::One),
            "[a-z/+#\\\\.]{0,6}".prop_map(|s| Level::Word(s.into())),
        ], 1..6), many in any::<bool>()) {
            let mut levels = levels;
            if many { levels.push(Level::Many); }
            let p = Pattern(levels);
            prop_assert_eq!(Pattern::from_canonical(&p.to_canonical()), p);
        }
    }
}
