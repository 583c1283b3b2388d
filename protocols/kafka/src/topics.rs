//! Kafka topics over the core's topic convention (`polymq::topic`): partition
//! `p` of topic `t` is the stream queue `topic/<t>/<p>`. Creating, growing
//! and deleting topics is declaring and deleting those queues; topic configs
//! are the streams' options.

use polymq::queue::{QueueId, QueueOptions};
use polymq::{topic, Store, StoreError};

/// Kafka error codes used for topics.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_REQUEST: i16 = 42;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_VERSION: i16 = 35;
}

/// Kafka's topic name rule (`[a-zA-Z0-9._-]`, not `.` / `..`), within the
/// core's length limit for partition queue names (244 bytes; Kafka's is 249).
pub fn valid_name(name: &str) -> bool {
    topic::valid_name(name)
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The partition queues of a topic (empty: no such topic).
pub fn partitions(store: &Store, name: &str) -> Vec<QueueId> {
    topic::partitions(store, name)
}

/// The configs a topic honours, as stream options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

impl TopicConfig {
    pub fn from_options(o: &QueueOptions) -> TopicConfig {
        TopicConfig { retention_ms: o.retention_ms, retention_bytes: o.retention_bytes }
    }

    /// Applies these settings to a stream's options (the rest is kept).
    pub fn apply(&self, o: &QueueOptions) -> QueueOptions {
        QueueOptions { retention_ms: self.retention_ms, retention_bytes: self.retention_bytes, ..o.clone() }
    }

    /// Sets one Kafka config; `None` resets it to the default. Errors are
    /// the message of an INVALID_CONFIG answer.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        let millis_or_bytes = |v: Option<&str>| -> Result<Option<u64>, String> {
            match v {
                None => Ok(None),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(-1) => Ok(None),
                    Ok(n) if n >= 0 => Ok(Some(n as u64)),
                    _ => Err(format!("{name}: {v:?} is not -1 or a non-negative integer")),
                },
            }
        };
        match name {
            "retention.ms" => self.retention_ms = millis_or_bytes(value)?,
            "retention.bytes" => self.retention_bytes = millis_or_bytes(value)?,
            "cleanup.policy" => match value.map(str::trim) {
                None | Some("delete") => {}
                Some(other) => return Err(format!("cleanup.policy={other} is not supported: only delete (no log compaction)")),
            },
            other => return Err(format!("{other} is not a config polymq honours (retention.ms, retention.bytes, cleanup.policy)")),
        }
        Ok(())
    }

    /// The configs we report, with whether each is at its default.
    pub fn entries(&self) -> Vec<(&'static str, String, bool)> {
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-1".into());
        vec![
            ("retention.ms", n(self.retention_ms), self.retention_ms.is_none()),
            ("retention.bytes", n(self.retention_bytes), self.retention_bytes.is_none()),
            ("cleanup.policy", "delete".into(), true),
        ]
    }
}

/// Read-only topic configs we report beside the honoured ones.
pub fn read_only_entries() -> Vec<(&'static str, String)> {
    vec![
        ("max.message.bytes", polymq::limits::RECORD_BYTES_MAX.to_string()),
        ("message.timestamp.type", "CreateTime".into()),
        ("min.insync.replicas", "1".into()),
        ("compression.type", "producer".into()),
    ]
}

/// Why creating a topic failed, as a Kafka error code and message.
pub struct TopicError {
    pub code: i16,
    pub message: String,
}

impl TopicError {
    pub fn new(code: i16, message: impl Into<String>) -> TopicError {
        TopicError { code, message: message.into() }
    }
}

pub fn store_error(e: &StoreError) -> TopicError {
    TopicError::new(code::KAFKA_STORAGE_ERROR, e.to_string())
}

/// Creates `name` with `count` partitions (partitions that already exist
/// are kept, so a create racing another one converges).
pub async fn create(store: &Store, name: &str, count: u32, config: TopicConfig) -> Result<Vec<QueueId>, TopicError> {
    if !valid_name(name) {
        return Err(TopicError::new(code::INVALID_TOPIC_EXCEPTION, format!("{name:?} is not a valid topic name")));
    }
    if count == 0 || count > topic::PARTITIONS_MAX {
        return Err(TopicError::new(code::INVALID_PARTITIONS, format!("partitions must be 1..={}", topic::PARTITIONS_MAX)));
    }
    let opts = config.apply(&QueueOptions::stream());
    let mut out = Vec::with_capacity(count as usize);
    for p in 0..count {
        let info = store.declare_queue(&topic::partition_queue(name, p), opts.clone()).await.map_err(|e| store_error(&e))?;
        out.push(info.id);
    }
    Ok(out)
}

/// Adds partitions up to `count`, with the options of partition 0.
pub async fn grow(store: &Store, name: &str, count: u32) -> Result<(), TopicError> {
    let existing = partitions(store, name);
    let Some(first) = existing.first() else {
        return Err(TopicError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}")));
    };
    if count as usize <= existing.len() {
        return Err(TopicError::new(
            code::INVALID_PARTITIONS,
            format!("topic {name:?} has {} partitions; the count can only grow", existing.len()),
        ));
    }
    if count > topic::PARTITIONS_MAX {
        return Err(TopicError::new(code::INVALID_PARTITIONS, format!("partitions must be at most {}", topic::PARTITIONS_MAX)));
    }
    let opts = store.queue_info(*first).map(|i| i.options).unwrap_or_else(QueueOptions::stream);
    for p in existing.len() as u32..count {
        store.declare_queue(&topic::partition_queue(name, p), opts.clone()).await.map_err(|e| store_error(&e))?;
    }
    Ok(())
}

/// Deletes every partition, the highest first, so that what is left is
/// always a topic with fewer partitions (never a gap).
pub async fn delete(store: &Store, name: &str) -> Result<bool, TopicError> {
    let parts = partitions(store, name);
    if parts.is_empty() {
        return Ok(false);
    }
    for id in parts.into_iter().rev() {
        store.delete_queue(id).await.map_err(|e| store_error(&e))?;
    }
    Ok(true)
}

/// Sets the configs of every partition.
pub async fn alter(store: &Store, name: &str, config: TopicConfig) -> Result<(), TopicError> {
    let parts = partitions(store, name);
    if parts.is_empty() {
        return Err(TopicError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}")));
    }
    for id in parts {
        let Some(info) = store.queue_info(id) else { continue };
        let opts = config.apply(&info.options);
        if opts != info.options {
            store.alter_queue_options(id, opts).await.map_err(|e| store_error(&e))?;
        }
    }
    Ok(())
}

/// The configs of a topic (from partition 0).
pub fn config_of(store: &Store, name: &str) -> Option<TopicConfig> {
    let first = *partitions(store, name).first()?;
    store.queue_info(first).map(|i| TopicConfig::from_options(&i.options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_names() {
        for ok in ["orders", "a.b-c_D9", &"t".repeat(topic::NAME_BYTES_MAX)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"t".repeat(topic::NAME_BYTES_MAX + 1)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn configs_parse_and_refuse_what_we_do_not_honour() {
        let mut c = TopicConfig::default();
        c.set("retention.ms", Some("1000")).expect("ms");
        c.set("retention.bytes", Some("-1")).expect("bytes");
        c.set("cleanup.policy", Some("delete")).expect("delete");
        assert_eq!(c, TopicConfig { retention_ms: Some(1000), retention_bytes: None });
        assert!(c.set("cleanup.policy", Some("compact")).is_err());
        assert!(c.set("retention.ms", Some("-5")).is_err());
        assert!(c.set("segment.ms", Some("1")).is_err());
        c.set("retention.ms", None).expect("reset");
        assert_eq!(c.retention_ms, None);
    }
}
