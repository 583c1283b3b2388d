//! The one address space: how a message published over one protocol is
//! addressed in the others (`docs/interop.md` has the tables).
//!
//! The core knows no protocol, so the rules are over what the core has:
//! **topics** (a sequence of levels, written canonically with `/` between
//! levels), one **topic space** shared by every protocol that routes by topic
//! (default `amq.topic`), and **streams** (`topic/<t>/<p>`, see [`crate::topic`]).
//! Each protocol turns its own syntax into those and calls these functions:
//!
//! - A topic whose first level is `t` is also appended to stream topic `t`
//!   (renamed by `kafka_topics`), partition `murmur2(topic) % partitions`
//!   (Kafka's default partitioner, so a Kafka producer keying a record by the
//!   same topic lands in the same partition and per-topic order holds), when
//!   that stream topic exists. Stored once: the partition is one more target.
//! - A record appended to stream topic `t` is routed in the topic space under
//!   `t` (the record's key, or the `topic_header` header, if it is a topic in
//!   the subtree `t/...`; otherwise the topic `t` itself).
//! - Dotted keys (AMQP routing keys) are topics written with `.` between
//!   levels; a `.` inside a level is written `%2E` and a `%` as `%25`
//!   ([`dotted_from_levels`], [`levels_from_dotted`]), so every topic has
//!   exactly one dotted form and back.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use crate::queue::{QueueId, QueueOptions};
use crate::Store;

/// Header names every protocol shares (the `:` names are the broker's; a
/// user property / header whose name starts with `:` is stored with one more
/// `:`). Each protocol maps its own properties onto these.
pub mod header {
    /// The message's topic in canonical form (levels joined by `/`), when
    /// its key is not that (an AMQP routing key, a Kafka record key).
    pub const TOPIC: &[u8] = b":topic";
    pub const CONTENT_TYPE: &[u8] = b":content-type";
    pub const CORRELATION_ID: &[u8] = b":correlation-id";
    pub const REPLY_TO: &[u8] = b":reply-to";
    /// MQTT QoS the message was published with.
    pub const QOS: &[u8] = b":qos";
    pub const RETAIN: &[u8] = b":retain";
    /// The stream topic a record came from (records routed out of a stream).
    pub const SOURCE_STREAM: &[u8] = b":source-stream";
}

/// Record-header names of the shared properties, as Kafka consumers see them.
pub mod record_header {
    pub const CONTENT_TYPE: &[u8] = b"content-type";
    pub const CORRELATION_ID: &[u8] = b"correlation-id";
    pub const REPLY_TO: &[u8] = b"reply-to";
    pub const QOS: &[u8] = b"mqtt.qos";
    pub const RETAIN: &[u8] = b"mqtt.retain";
}

/// Most bytes a stored record batch may decompress to when another protocol
/// needs its records (a zip bomb must not allocate unboundedly). Batches that
/// decompress to more are not routed out of the stream (Kafka consumers still
/// get them byte-exact).
pub const DECODED_BATCH_BYTES_MAX_DEFAULT: u32 = 8 * 1024 * 1024;
/// Upper bound of `decoded_batch_bytes_max`: the core's record limit.
pub const DECODED_BATCH_BYTES_MAX_CEILING: u32 = crate::limits::RECORD_BYTES_MAX as u32;

/// The `[mapping]` section of the config: the defaults of the one address
/// space, and switches to rename, restrict or disable each direction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mapping {
    /// The topic space every topic-routing protocol shares (MQTT
    /// subscriptions; the AMQP exchange of this name on vhost `/`).
    pub topic_space: String,
    /// A topic published in the topic space by MQTT is appended to its stream topic too.
    pub mqtt_to_streams: bool,
    /// A publish to the shared exchange by AMQP is appended to its stream topic too.
    pub amqp_to_streams: bool,
    /// Records produced to a stream topic are routed into the topic space.
    pub streams_to_topics: bool,
    /// A topic whose stream topic does not exist creates it (default no, so
    /// IoT clients do not create thousands of Kafka topics).
    pub auto_create_streams: bool,
    /// Partitions of a stream topic created that way.
    pub auto_create_partitions: u32,
    /// First topic level -> stream topic name (rename). Kafka -> topic space
    /// uses it backwards.
    pub streams: BTreeMap<String, String>,
    /// Only first levels listed in `streams` map to stream topics (restrict).
    pub streams_only_listed: bool,
    /// Record header naming the topic of a record produced to a stream topic
    /// (wins over the key when both are topics of the stream's subtree).
    pub topic_header: String,
    /// See [`DECODED_BATCH_BYTES_MAX_DEFAULT`].
    pub decoded_batch_bytes_max: u32,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            topic_space: "amq.topic".to_owned(),
            mqtt_to_streams: true,
            amqp_to_streams: true,
            streams_to_topics: true,
            auto_create_streams: false,
            auto_create_partitions: 1,
            streams: BTreeMap::new(),
            streams_only_listed: false,
            topic_header: "mqtt.topic".to_owned(),
            decoded_batch_bytes_max: DECODED_BATCH_BYTES_MAX_DEFAULT,
        }
    }
}

impl Mapping {
    /// Checks what the types alone cannot; the reason names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.topic_space.is_empty() {
            return Err("mapping.topic_space must not be empty".into());
        }
        if !(1..=crate::topic::PARTITIONS_MAX).contains(&self.auto_create_partitions) {
            return Err(format!("mapping.auto_create_partitions must be 1..={}", crate::topic::PARTITIONS_MAX));
        }
        if let Some((level, t)) = self.streams.iter().find(|(l, t)| l.is_empty() || !valid_stream_name(t)) {
            return Err(format!("mapping.streams: {level:?} -> {t:?} is not a first level -> valid topic name"));
        }
        if !(1024..=DECODED_BATCH_BYTES_MAX_CEILING).contains(&self.decoded_batch_bytes_max) {
            return Err(format!("mapping.decoded_batch_bytes_max must be 1024..={DECODED_BATCH_BYTES_MAX_CEILING}"));
        }
        Ok(())
    }

    /// Parses `level=topic,level=topic` (the environment form of `streams`).
    pub fn parse_streams(value: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (level, t) = entry.split_once('=').ok_or_else(|| format!("{entry:?} is not level=topic"))?;
            out.insert(level.trim().to_owned(), t.trim().to_owned());
        }
        Ok(out)
    }

    /// The stream topic a topic (given as its levels) is also appended to,
    /// by name; `None` when no rule maps it. `$` topics (MQTT's system
    /// topics) never map; neither do first levels that are no legal stream
    /// (Kafka) topic name.
    pub fn stream_name_for(&self, levels: &[&str]) -> Option<String> {
        let first = *levels.first()?;
        if first.starts_with('$') {
            return None;
        }
        let name = match self.streams.get(first) {
            Some(t) => t.as_str(),
            None if self.streams_only_listed => return None,
            None => first,
        };
        valid_stream_name(name).then(|| name.to_owned())
    }

    /// The first topic level stream topic `name` stands for (inverse of the rename).
    pub fn first_level_for(&self, name: &str) -> Option<String> {
        if let Some((level, _)) = self.streams.iter().find(|(_, t)| t.as_str() == name) {
            return Some(level.clone());
        }
        if self.streams_only_listed || self.streams.contains_key(name) {
            // Listed under another name, or restricted: `name` is not a first level's stream.
            return None;
        }
        Some(name.to_owned())
    }

    /// The partition queue a topic is also appended to, declaring the stream
    /// topic first when `auto_create_streams` says so. `canonical` is the
    /// topic written with `/`, the partitioning key.
    pub async fn stream_target(&self, store: &Store, levels: &[&str], canonical: &str) -> Option<QueueId> {
        let name = self.stream_name_for(levels)?;
        let mut parts = crate::topic::partitions(store, &name);
        if parts.is_empty() && self.auto_create_streams {
            for p in 0..self.auto_create_partitions {
                let q = crate::topic::partition_queue(&name, p);
                match store.declare_queue(&q, QueueOptions::stream()).await {
                    Ok(info) => parts.push(info.id),
                    Err(e) => {
                        tracing::debug!(topic = %name, error = %e, "auto-creating a stream topic failed");
                        break;
                    }
                }
            }
        }
        if parts.is_empty() {
            return None;
        }
        Some(parts[partition_for(canonical.as_bytes(), parts.len() as u32) as usize])
    }

    /// The topic (canonical) a record of stream topic `stream` is routed
    /// under: the `topic_header` header, else the key, when it is a topic of
    /// the stream's subtree (`first/...` or `first` itself); otherwise the
    /// first level alone. `None`: the stream maps to no first level.
    pub fn topic_for_record(&self, stream: &str, key: Option<&[u8]>, headers: &[(Bytes, Option<Bytes>)]) -> Option<String> {
        let first = self.first_level_for(stream)?;
        let in_subtree = |t: &[u8]| -> Option<String> {
            let t = std::str::from_utf8(t).ok()?;
            let ok = (t == first || t.strip_prefix(first.as_str()).is_some_and(|r| r.starts_with('/')))
                && !t.contains(['+', '#', '\0'])
                && t.len() <= TOPIC_BYTES_MAX;
            ok.then(|| t.to_owned())
        };
        let named = headers.iter().rev().find(|(n, _)| &n[..] == self.topic_header.as_bytes()).and_then(|(_, v)| v.as_deref());
        named.and_then(in_subtree).or_else(|| key.and_then(in_subtree)).or(Some(first))
    }
}

/// Longest topic routed out of a stream (MQTT's limit for a topic name).
pub const TOPIC_BYTES_MAX: usize = 65_535;

/// Whether `name` is a legal Kafka topic name that is also a stream topic
/// (`[A-Za-z0-9._-]`, not `.` or `..`, short enough for a queue name).
pub fn valid_stream_name(name: &str) -> bool {
    crate::topic::valid_name(name)
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Kafka's default partitioner: `murmur2(key) & 0x7fffffff % partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A topic's dotted form: levels joined by `.`, a `.` inside a level written
/// `%2E` and a `%` written `%25` (nothing else is escaped). `+`/`#` levels
/// become `*`/`#` when `wildcards` (subscription filters -> binding keys).
pub fn dotted_from_levels<'a>(levels: impl IntoIterator<Item = &'a str>, wildcards: bool) -> String {
    let mut out = String::new();
    for (i, l) in levels.into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if wildcards && l == "+" {
            out.push('*');
            continue;
        }
        for c in l.chars() {
            match c {
                '.' => out.push_str("%2E"),
                '%' => out.push_str("%25"),
                c => out.push(c),
            }
        }
    }
    out
}

/// The dotted form of a canonical topic (`a/b.c` -> `a.b%2Ec`).
pub fn dotted_from_topic(topic: &str) -> String {
    dotted_from_levels(topic.split('/'), false)
}

/// The levels of a dotted key: split on `.`, then `%2E` (any case) -> `.`
/// and `%25` -> `%` inside each level; any other `%` stays as it is.
pub fn levels_from_dotted(key: &str) -> Vec<std::borrow::Cow<'_, str>> {
    key.split('.').map(unescape_level).collect()
}

/// The canonical topic of a dotted key (`a.b%2Ec` -> `a/b.c`).
pub fn topic_from_dotted(key: &str) -> String {
    let levels = levels_from_dotted(key);
    let mut out = String::with_capacity(key.len());
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(l);
    }
    out
}

fn unescape_level(level: &str) -> std::borrow::Cow<'_, str> {
    if !level.contains('%') {
        return std::borrow::Cow::Borrowed(level);
    }
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc.map(str::to_ascii_uppercase).as_deref() {
            Some("%2E") => out.push('.'),
            Some("%25") => out.push('%'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// The headers of a stored message as record headers for a stream consumer
/// (Kafka): the shared properties under their documented names
/// ([`record_header`]), user properties / string headers as they are (a
/// stored `::x` is the user's `:x`), every other `:` header dropped (the
/// broker's own bookkeeping).
pub fn record_headers_from(headers: &[(Bytes, Bytes)]) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let mapped: Option<&'static [u8]> = match &name[..] {
            header::CONTENT_TYPE => Some(record_header::CONTENT_TYPE),
            header::CORRELATION_ID => Some(record_header::CORRELATION_ID),
            header::REPLY_TO => Some(record_header::REPLY_TO),
            header::QOS => Some(record_header::QOS),
            header::RETAIN => Some(record_header::RETAIN),
            _ => None,
        };
        if let Some(m) = mapped {
            out.push((Bytes::from_static(m), value.clone()));
        } else if name.starts_with(b"::") {
            out.push((name.slice(1..), value.clone()));
        } else if !name.starts_with(b":") {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}

/// Record headers as stored headers (inverse of [`record_headers_from`] for
/// the shared properties; `mqtt.qos` / `mqtt.retain` stay plain headers, so a
/// record does not pretend to be an MQTT publish). A null value is empty.
pub fn headers_from_record(headers: &[(Bytes, Option<Bytes>)]) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let value = value.clone().unwrap_or_default();
        let mapped: Option<&'static [u8]> = match &name[..] {
            record_header::CONTENT_TYPE => Some(header::CONTENT_TYPE),
            record_header::CORRELATION_ID => Some(header::CORRELATION_ID),
            record_header::REPLY_TO => Some(header::REPLY_TO),
            _ => None,
        };
        match mapped {
            Some(m) => out.push((Bytes::from_static(m), value)),
            None if name.starts_with(b":") => out.push((Bytes::from([&b":"[..], &name[..]].concat()), value)),
            None => out.push((name.clone(), value)),
        }
    }
    out
}

/// The canonical topic of a stored message routed in the topic space: its
/// `:topic` header, else its key.
pub fn topic_of(key: &[u8], headers: &[(Bytes, Bytes)]) -> Bytes {
    headers.iter().find(|(n, _)| &n[..] == header::TOPIC).map(|(_, v)| v.clone()).unwrap_or_else(|| Bytes::copy_from_slice(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data) as i32, want, "{:?}", std::str::from_utf8(data));
        }
    }

    #[test]
    fn dots_inside_levels_are_escaped_and_come_back() {
        assert_eq!(dotted_from_topic("sensors/dev42/temp"), "sensors.dev42.temp");
        assert_eq!(dotted_from_topic("a/b.c/100%"), "a.b%2Ec.100%25");
        assert_eq!(topic_from_dotted("a.b%2Ec.100%25"), "a/b.c/100%");
        assert_eq!(topic_from_dotted("a.b%2ec"), "a/b.c", "either case");
        assert_eq!(topic_from_dotted("50%off.x"), "50%off/x", "a % that escapes nothing stays");
        assert_eq!(dotted_from_levels(["a", "+", "#"], true), "a.*.#");
    }

    proptest! {
        #[test]
        fn every_topic_has_one_dotted_form_and_back(levels in proptest::collection::vec("[a-z.%/2Ee5]{0,6}", 1..5)) {
            let levels: Vec<String> = levels.into_iter().map(|l| l.replace('/', "")).collect();
            let topic = levels.join("/");
            prop_assert_eq!(topic_from_dotted(&dotted_from_topic(&topic)), topic);
        }
    }

    #[test]
    fn first_level_names_the_stream_topic_with_renames_and_restrictions() {
        let mut m = Mapping::default();
        assert_eq!(m.stream_name_for(&["sensors", "dev42", "temp"]).as_deref(), Some("sensors"));
        assert_eq!(m.stream_name_for(&["$SYS", "x"]), None, "system topics never map");
        assert_eq!(m.stream_name_for(&["my sensors", "x"]), None, "not a Kafka topic name");
        assert_eq!(m.stream_name_for(&["", "x"]), None);
        m.streams.insert("sensors".into(), "iot.sensors".into());
        assert_eq!(m.stream_name_for(&["sensors", "x"]).as_deref(), Some("iot.sensors"));
        assert_eq!(m.first_level_for("iot.sensors").as_deref(), Some("sensors"));
        assert_eq!(m.first_level_for("sensors"), None, "listed under another name");
        assert_eq!(m.first_level_for("other").as_deref(), Some("other"));
        m.streams_only_listed = true;
        assert_eq!(m.stream_name_for(&["other", "x"]), None);
        assert_eq!(m.first_level_for("other"), None);
        m.validate().expect("valid");
        m.streams.insert("bad".into(), "a/b".into());
        assert!(m.validate().is_err());
    }

    #[test]
    fn a_record_routes_under_its_key_or_header_inside_the_subtree_only() {
        let m = Mapping::default();
        let none: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        assert_eq!(m.topic_for_record("sensors", Some(b"sensors/dev7/cmd"), &none).as_deref(), Some("sensors/dev7/cmd"));
        assert_eq!(m.topic_for_record("sensors", Some(b"user-42"), &none).as_deref(), Some("sensors"));
        assert_eq!(m.topic_for_record("sensors", Some(b"sensorsX/1"), &none).as_deref(), Some("sensors"));
        assert_eq!(m.topic_for_record("sensors", Some(b"sensors/+"), &none).as_deref(), Some("sensors"), "no wildcards");
        assert_eq!(m.topic_for_record("sensors", None, &none).as_deref(), Some("sensors"));
        let h = vec![(Bytes::from_static(b"mqtt.topic"), Some(Bytes::from_static(b"sensors/a/b")))];
        assert_eq!(m.topic_for_record("sensors", Some(b"k"), &h).as_deref(), Some("sensors/a/b"));
        let outside = vec![(Bytes::from_static(b"mqtt.topic"), Some(Bytes::from_static(b"other/a")))];
        assert_eq!(m.topic_for_record("sensors", Some(b"sensors/x"), &outside).as_deref(), Some("sensors/x"));
    }

    #[test]
    fn shared_properties_get_documented_record_header_names() {
        let stored = vec![
            (Bytes::from_static(b":qos"), Bytes::from_static(b"1")),
            (Bytes::from_static(b":mqtt-client"), Bytes::from_static(b"dev42")),
            (Bytes::from_static(b":content-type"), Bytes::from_static(b"text/plain")),
            (Bytes::from_static(b"::odd"), Bytes::from_static(b"1")),
            (Bytes::from_static(b"unit"), Bytes::from_static(b"C")),
        ];
        let rec = record_headers_from(&stored);
        let names: Vec<&[u8]> = rec.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, vec![&b"mqtt.qos"[..], b"content-type", b":odd", b"unit"]);
        let back = headers_from_record(&rec.into_iter().map(|(n, v)| (n, Some(v))).collect::<Vec<_>>());
        let names: Vec<&[u8]> = back.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, vec![&b"mqtt.qos"[..], b":content-type", b"::odd", b"unit"]);
    }
}
