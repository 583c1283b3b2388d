//! A topic trie: patterns in, matching values out, in time proportional to
//! the topic's depth and the number of wildcard branches, not to the number
//! of bindings.

use std::collections::HashMap;

use super::{Level, Pattern};

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    one: Option<Box<Node<V>>>,
    /// Bound with `#` at this depth: match this level's parent and everything below.
    many: Vec<V>,
    /// Patterns with a `#` here followed by more levels (AMQP `#.error`):
    /// the rest is matched against every suffix of the topic.
    many_then: Option<Box<Node<V>>>,
    /// Bound exactly here.
    here: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::new(), one: None, many: Vec::new(), many_then: None, here: Vec::new() }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.one.is_none() && self.many.is_empty() && self.many_then.is_none() && self.here.is_empty()
    }
}

#[derive(Debug)]
pub struct TopicTrie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie { root: Node::default(), len: 0 }
    }
}

impl<V: PartialEq + Clone> TopicTrie<V> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a binding; false if the same (pattern, value) was already there.
    pub fn insert(&mut self, p: &Pattern, v: V) -> bool {
        let mut node = &mut self.root;
        let last = p.0.len().saturating_sub(1);
        for (i, l) in p.0.iter().enumerate() {
            match l {
                Level::Word(w) => node = node.children.entry(w.clone()).or_default(),
                Level::One => node = node.one.get_or_insert_with(Default::default),
                Level::Many if i < last => node = node.many_then.get_or_insert_with(Default::default),
                Level::Many => {
                    if node.many.contains(&v) {
                        return false;
                    }
                    node.many.push(v);
                    self.len += 1;
                    return true;
                }
            }
        }
        if node.here.contains(&v) {
            return false;
        }
        node.here.push(v);
        self.len += 1;
        true
    }

    /// Removes a binding, pruning emptied branches; false if it was not there.
    pub fn remove(&mut self, p: &Pattern, v: &V) -> bool {
        let removed = Self::remove_at(&mut self.root, &p.0, v);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<V>, levels: &[Level], v: &V) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return take(&mut node.here, v);
        };
        match first {
            Level::Many if rest.is_empty() => take(&mut node.many, v),
            Level::Many => {
                let Some(child) = node.many_then.as_deref_mut() else { return false };
                let r = Self::remove_at(child, rest, v);
                if child.is_empty() {
                    node.many_then = None;
                }
                r
            }
            Level::One => {
                let Some(child) = node.one.as_deref_mut() else { return false };
                let r = Self::remove_at(child, rest, v);
                if child.is_empty() {
                    node.one = None;
                }
                r
            }
            Level::Word(w) => {
                let Some(child) = node.children.get_mut(w) else { return false };
                let r = Self::remove_at(child, rest, v);
                if child.is_empty() {
                    node.children.remove(w);
                }
                r
            }
        }
    }

    /// Whether some binding could match a topic whose first level is
    /// `first` (a cheap pre-check before work that only matters when
    /// something is bound there, e.g. decoding records to route them).
    pub fn may_match_under(&self, first: &str, dollar_rule: bool) -> bool {
        let r = &self.root;
        let wild = !(dollar_rule && first.starts_with('$')) && (!r.many.is_empty() || r.many_then.is_some() || r.one.is_some());
        wild || r.children.contains_key(first)
    }

    /// Calls `f` for every value whose pattern matches `topic`. With
    /// `dollar_rule` (MQTT), a topic whose first level starts with `$` is not
    /// matched by a wildcard in the first level. A value bound by several
    /// matching patterns is reported once per pattern.
    pub fn matches(&self, topic: &[&str], dollar_rule: bool, f: &mut impl FnMut(&V)) {
        let guard = dollar_rule && topic.first().is_some_and(|l| l.starts_with('$'));
        Self::walk(&self.root, topic, 0, guard, f);
    }

    fn walk(node: &Node<V>, topic: &[&str], i: usize, guard: bool, f: &mut impl FnMut(&V)) {
        let wild_ok = !(guard && i == 0);
        if wild_ok {
            node.many.iter().for_each(&mut *f);
            if let Some(rest) = &node.many_then {
                // `#` takes zero or more levels, then the rest must match.
                for j in i..=topic.len() {
                    Self::walk(rest, topic, j, false, f);
                }
            }
        }
        let Some(level) = topic.get(i) else {
            node.here.iter().for_each(&mut *f);
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::walk(child, topic, i + 1, guard, f);
        }
        if wild_ok {
            if let Some(one) = &node.one {
                Self::walk(one, topic, i + 1, guard, f);
            }
        }
    }

    /// Every binding, for snapshots.
    pub fn for_each(&self, f: &mut impl FnMut(&Pattern, &V)) {
        let mut prefix = Vec::new();
        Self::visit(&self.root, &mut prefix, f);
    }

    fn visit(node: &Node<V>, prefix: &mut Vec<Level>, f: &mut impl FnMut(&Pattern, &V)) {
        let mut p = Pattern(prefix.clone());
        for v in &node.here {
            f(&p, v);
        }
        p.0.push(Level::Many);
        for v in &node.many {
            f(&p, v);
        }
        for (w, child) in &node.children {
            prefix.push(Level::Word(w.clone()));
            Self::visit(child, prefix, f);
            prefix.pop();
        }
        if let Some(one) = &node.one {
            prefix.push(Level::One);
            Self::visit(one, prefix, f);
            prefix.pop();
        }
        if let Some(rest) = &node.many_then {
            prefix.push(Level::Many);
            Self::visit(rest, prefix, f);
            prefix.pop();
        }
    }
}

fn take<V: PartialEq>(vs: &mut Vec<V>, v: &V) -> bool {
    match vs.iter().position(|x| x == v) {
        Some(i) => {
            vs.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mq(s: &str) -> Pattern {
        Pattern::parse(s, '/', "+", "#").expect("pattern")
    }

    fn matched(t: &TopicTrie<u32>, topic: &str, dollar: bool) -> Vec<u32> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        t.matches(&levels, dollar, &mut |v| out.push(*v));
        out.sort_unstable();
        out
    }

    #[test]
    fn mqtt_spec_examples() {
        let mut t = TopicTrie::default();
        t.insert(&mq("sport/tennis/player1/#"), 1);
        t.insert(&mq("sport/#"), 2);
        t.insert(&mq("#"), 3);
        t.insert(&mq("sport/tennis/+"), 4);
        t.insert(&mq("+/+"), 5);
        t.insert(&mq("/+"), 6);
        t.insert(&mq("+/monitor/Clients"), 7);
        t.insert(&mq("$SYS/#"), 8);
        assert_eq!(matched(&t, "sport/tennis/player1", true), [1, 2, 3, 4]);
        assert_eq!(matched(&t, "sport/tennis/player1/ranking", true), [1, 2, 3]);
        assert_eq!(matched(&t, "sport", true), [2, 3], "`sport/#` matches its parent level");
        assert_eq!(matched(&t, "sport/", true), [2, 3, 5]);
        assert_eq!(matched(&t, "/finance", true), [3, 5, 6]);
        assert_eq!(matched(&t, "$SYS/monitor/Clients", true), [8], "no first-level wildcard matches $ topics");
        assert_eq!(matched(&t, "$SYS/monitor/Clients", false), [3, 7, 8], "AMQP has no $ rule");
    }

    #[test]
    fn insert_is_idempotent_and_remove_prunes() {
        let mut t = TopicTrie::default();
        assert!(t.insert(&mq("a/+/c"), 1));
        assert!(!t.insert(&mq("a/+/c"), 1));
        assert!(t.insert(&mq("a/#"), 1));
        assert_eq!(t.len(), 2);
        assert!(t.remove(&mq("a/+/c"), &1));
        assert!(!t.remove(&mq("a/+/c"), &1));
        assert!(t.remove(&mq("a/#"), &1));
        assert!(t.root.is_empty(), "emptied branches are pruned");
    }

    fn naive(p: &[Level], topic: &[&str]) -> bool {
        match (p.split_first(), topic.split_first()) {
            (Some((Level::Many, pr)), _) => (0..=topic.len()).any(|k| naive(pr, &topic[k..])),
            (None, None) => true,
            (Some((Level::One, pr)), Some((_, tr))) => naive(pr, tr),
            (Some((Level::Word(w), pr)), Some((t, tr))) => &**w == *t && naive(pr, tr),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn hash_anywhere_agrees_with_a_naive_matcher(
            pats in proptest::collection::vec("(a|b|\\+|#)(/(a|b|\\+|#)){0,4}", 1..20),
            topics in proptest::collection::vec("(a|b|c)(/(a|b|c)){0,4}", 1..20),
        ) {
            let mut t = TopicTrie::default();
            let parsed: Vec<Pattern> = pats.iter().map(|p| Pattern::from_canonical(p)).collect();
            for (i, p) in parsed.iter().enumerate() {
                t.insert(p, i);
            }
            let mut listed = Vec::new();
            t.for_each(&mut |p, v| listed.push((p.clone(), *v)));
            listed.sort();
            let mut want_listed: Vec<(Pattern, usize)> = parsed.iter().cloned().zip(0..).collect();
            want_listed.sort();
            prop_assert_eq!(listed, want_listed);
            for topic in &topics {
                let levels: Vec<&str> = topic.split('/').collect();
                let mut got = Vec::new();
                t.matches(&levels, false, &mut |v| got.push(*v));
                got.sort_unstable();
                got.dedup();
                let want: Vec<usize> = parsed.iter().enumerate().filter(|(_, p)| naive(&p.0, &levels)).map(|(i, _)| i).collect();
                prop_assert_eq!(got, want, "topic {}", topic);
            }
            for (i, p) in parsed.iter().enumerate() {
                prop_assert!(t.remove(p, &i));
            }
            prop_assert!(t.is_empty() && t.root.is_empty());
        }

        #[test]
        fn trie_agrees_with_a_naive_matcher(
            pats in proptest::collection::vec("(a|b|\\+)(/(a|b|\\+)){0,3}(/#)?|#", 1..20),
            topics in proptest::collection::vec("(a|b|c)(/(a|b|c)){0,4}", 1..20),
        ) {
            let mut t = TopicTrie::default();
            let parsed: Vec<Pattern> = pats.iter().map(|p| mq(p)).collect();
            for (i, p) in parsed.iter().enumerate() {
                t.insert(p, i);
            }
            for topic in &topics {
                let levels: Vec<&str> = topic.split('/').collect();
                let mut got = Vec::new();
                t.matches(&levels, false, &mut |v| got.push(*v));
                got.sort_unstable();
                got.dedup();
                let mut want: Vec<usize> = parsed.iter().enumerate().filter(|(_, p)| naive(&p.0, &levels)).map(|(i, _)| i).collect();
                // Duplicate patterns bind the same index once per distinct (pattern, value).
                want.dedup();
                prop_assert_eq!(got, want, "topic {}", topic);
            }
        }
    }
}
