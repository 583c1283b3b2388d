//! Subscriptions: filters as core patterns, the options MQTT keeps per
//! subscription, and the names of the queues MQTT declares.

use polymq::route::{Level, Pattern};

use crate::packet::{QoS, RetainHandling, SubscriptionOptions};

/// Where a persistent session's subscription options are kept: one binding
/// per subscription whose pattern is `[filter, options]`. Nothing publishes
/// into this space; it is durable per-queue metadata that the core deletes
/// with the queue.
pub(crate) const OPTIONS_SPACE: &str = "mqtt.subscriptions";

/// Queue names are at most this long in the core.
const QUEUE_NAME_MAX: usize = polymq::limits::QUEUE_NAME_BYTES_MAX;

/// What we remember about one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOpts {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

impl SubOpts {
    /// Compact text form, e.g. `q1n0r1h0i17`.
    pub fn encode(&self) -> String {
        let o = &self.options;
        let mut s = format!("q{}n{}r{}h{}", o.qos as u8, o.no_local as u8, o.retain_as_published as u8, o.retain_handling as u8);
        if let Some(id) = self.identifier {
            s.push_str(&format!("i{id}"));
        }
        s
    }

    pub fn decode(s: &str) -> Option<SubOpts> {
        let b = s.as_bytes();
        if b.len() < 8 || b[0] != b'q' || b[2] != b'n' || b[4] != b'r' || b[6] != b'h' {
            return None;
        }
        let digit = |i: usize| b[i].checked_sub(b'0');
        let options = SubscriptionOptions {
            qos: QoS::from_u8(digit(1)?)?,
            no_local: digit(3)? == 1,
            retain_as_published: digit(5)? == 1,
            retain_handling: RetainHandling::from_u8(digit(7)?)?,
        };
        let identifier = match s.get(8..) {
            Some("") | None => None,
            Some(rest) => Some(rest.strip_prefix('i')?.parse().ok()?),
        };
        Some(SubOpts { options, identifier })
    }
}

/// An MQTT filter (without `$share/g/`) as a core pattern.
pub(crate) fn filter_pattern(filter: &str) -> Pattern {
    Pattern(
        filter
            .split('/')
            .map(|l| match l {
                "+" => Level::One,
                "#" => Level::Many,
                w => Level::Word(w.into()),
            })
            .collect(),
    )
}

/// The options binding of a subscription: `[filter, options]`, both literal.
pub(crate) fn options_pattern(filter: &str, opts: &SubOpts) -> Pattern {
    Pattern(vec![Level::Word(filter.into()), Level::Word(opts.encode().into())])
}

/// Reads back an options binding.
pub(crate) fn parse_options_pattern(p: &Pattern) -> Option<(String, SubOpts)> {
    match &p.0[..] {
        [Level::Word(filter), Level::Word(opts)] => Some((filter.to_string(), SubOpts::decode(opts)?)),
        _ => None,
    }
}

/// Whether `topic` (split in levels) matches `filter` (split in levels),
/// with the MQTT rule that a wildcard first level skips `$` topics.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            w => {
                if t.next() != Some(w) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// A queue name `<prefix><key>`, or `<prefix>~<hash>` when that would be too
/// long for the core. 128 bits of two FNV-1a hashes: collisions are not a
/// practical concern, and the hash is stable across releases (it names
/// durable queues).
pub(crate) fn queue_name(prefix: &str, key: &str) -> String {
    if prefix.len() + key.len() <= QUEUE_NAME_MAX && !key.starts_with('~') {
        return format!("{prefix}{key}");
    }
    let h1 = fnv1a(key.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let h2 = fnv1a(key.as_bytes(), 0x6c62_272e_07bb_0142);
    format!("{prefix}~{h1:016x}{h2:016x}")
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub(crate) const SESSION_PREFIX: &str = "mqtt/s/";
pub(crate) const TRANSIENT_PREFIX: &str = "mqtt/t/";
pub(crate) const SHARED_PREFIX: &str = "mqtt/g/";
pub(crate) const RETAINED_PREFIX: &str = "mqtt/r/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip() {
        for id in [None, Some(1), Some(268_435_455)] {
            let o = SubOpts {
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
                identifier: id,
            };
            assert_eq!(SubOpts::decode(&o.encode()), Some(o));
            let p = options_pattern("a/+/#", &o);
            assert_eq!(parse_options_pattern(&Pattern::from_canonical(&p.to_canonical())), Some(("a/+/#".to_owned(), o)));
        }
        assert_eq!(SubOpts::decode("q3n0r0h0"), None);
        assert_eq!(SubOpts::decode("q1n0r0h0x"), None);
    }

    #[test]
    fn matching_follows_the_spec() {
        let yes =
            [("a/b", "a/b"), ("a/+", "a/b"), ("a/#", "a"), ("a/#", "a/b/c"), ("#", "a"), ("+/+", "/x"), ("+", ""), ("$SYS/#", "$SYS/x")];
        let no = [("a/b", "a/c"), ("a/+", "a/b/c"), ("a/+", "a"), ("#", "$SYS/x"), ("+/x", "$SYS/x"), ("a", "a/b")];
        for (f, t) in yes {
            assert!(filter_matches(f, t), "{f} should match {t}");
        }
        for (f, t) in no {
            assert!(!filter_matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn long_keys_get_a_stable_hashed_name() {
        let long = "x".repeat(300);
        let n = queue_name(SESSION_PREFIX, &long);
        assert!(n.len() <= QUEUE_NAME_MAX);
        assert_eq!(n, queue_name(SESSION_PREFIX, &long));
        assert_ne!(n, queue_name(SESSION_PREFIX, &"y".repeat(300)));
        assert_eq!(queue_name(SESSION_PREFIX, "dev1"), "mqtt/s/dev1");
    }
}
