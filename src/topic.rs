//! Topics: named, partitioned streams that every protocol can address.
//!
//! A topic is not a core object of its own. Partition `p` of topic `t` is the
//! stream queue named `topic/<t>/<p>`, and the partitions that exist are the
//! topic: a Kafka topic with 3 partitions is the queues `topic/t/0..2`, an
//! AMQP queue declared with `x-queue-type: stream` named `orders` is the
//! one-partition topic `orders` (`topic/orders/0`). Creating, listing and
//! deleting topics is declaring, listing and deleting those queues, so there
//! is no second registry to keep consistent with the queues.

use crate::limits::QUEUE_NAME_BYTES_MAX;
use crate::queue::QueueId;
use crate::Store;

/// What every partition queue name starts with. Protocols refuse user queue
/// names with this prefix.
pub const PREFIX: &str = "topic/";

/// Most partitions a topic can have.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Longest topic name: the prefix, a `/` and the largest partition number
/// must fit a queue name.
pub const NAME_BYTES_MAX: usize = QUEUE_NAME_BYTES_MAX - PREFIX.len() - 1 - 4;

/// The core queue name of partition `partition` of `topic`.
pub fn partition_queue(topic: &str, partition: u32) -> String {
    format!("{PREFIX}{topic}/{partition}")
}

/// The topic and partition of a partition queue name.
pub fn parse_partition_queue(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (topic, p) = rest.rsplit_once('/')?;
    if topic.is_empty() || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
        return None;
    }
    Some((topic, p.parse().ok()?))
}

/// Whether `topic` can name a topic (length and characters; the rest of the
/// rules belong to the protocol that names it).
pub fn valid_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= NAME_BYTES_MAX && !topic.contains('/')
}

/// The partition queues of `topic`, in partition order (empty: no such topic).
/// Served from the store's [`PartitionCache`]: every MQTT publish and every
/// Kafka produce and fetch asks, and the answer changes only when a queue
/// is declared or deleted.
pub fn partitions(store: &Store, topic: &str) -> Vec<QueueId> {
    store.partition_cache().get(store, topic)
}

/// The partition queues of `topic`, looked up in the queue table.
fn partitions_uncached(store: &Store, topic: &str) -> Vec<QueueId> {
    let mut out = Vec::new();
    while (out.len() as u32) < PARTITIONS_MAX {
        match store.queue_id(&partition_queue(topic, out.len() as u32)) {
            Some(id) => out.push(id),
            None => break,
        }
    }
    out
}

/// Topic -> partition queues, for as long as no queue name is added or
/// removed (the queue table's names version): then it starts empty again.
/// A lookup that began before a change never stores its answer after it.
/// Bounded: past [`PARTITION_CACHE_TOPICS_MAX`] topics it starts over, so
/// publishers naming endless topics cannot grow it.
#[derive(Default)]
pub struct PartitionCache {
    entries: std::sync::Mutex<(u64, std::collections::HashMap<String, Vec<QueueId>>)>,
}

/// Topics the partition cache holds at most.
pub const PARTITION_CACHE_TOPICS_MAX: usize = 4096;

impl PartitionCache {
    fn get(&self, store: &Store, topic: &str) -> Vec<QueueId> {
        let version = store.queue_names_version();
        {
            let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if e.0 < version {
                e.1.clear();
                e.0 = version;
            }
            if e.0 == version {
                if let Some(parts) = e.1.get(topic) {
                    return parts.clone();
                }
            }
        }
        let parts = partitions_uncached(store, topic);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Only if no name changed since `version` was read (nor during the lookup).
        if e.0 == version && store.queue_names_version() == version {
            if e.1.len() >= PARTITION_CACHE_TOPICS_MAX {
                e.1.clear();
            }
            e.1.insert(topic.to_owned(), parts.clone());
        }
        parts
    }
}

/// Every topic with its partition count, sorted by name. Walks the queue
/// table: meant for admin requests (Kafka metadata of all topics), not for
/// the data path.
pub fn list(store: &Store) -> Vec<(String, u32)> {
    let mut counts: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    for (_, name) in store.list_queues() {
        if let Some((topic, p)) = parse_partition_queue(&name) {
            let n = counts.entry(topic.to_owned()).or_default();
            *n = (*n).max(p + 1);
        }
    }
    counts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        assert_eq!(partition_queue("orders", 3), "topic/orders/3");
        assert_eq!(parse_partition_queue("topic/orders/3"), Some(("orders", 3)));
        assert_eq!(parse_partition_queue("topic/a.b-c_d/0"), Some(("a.b-c_d", 0)));
        for bad in ["orders/3", "topic/orders", "topic//1", "topic/x/", "topic/x/01", "topic/x/-1", "topic/x/1a"] {
            assert_eq!(parse_partition_queue(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_longest_name_fits_a_queue_name() {
        let longest = "t".repeat(NAME_BYTES_MAX);
        assert!(valid_name(&longest));
        assert!(!valid_name(&format!("{longest}t")));
        assert!(partition_queue(&longest, PARTITIONS_MAX - 1).len() <= QUEUE_NAME_BYTES_MAX);
        assert!(!valid_name("a/b") && !valid_name(""));
    }

    /// The cache answers what the queue table would, right after every
    /// declaration and deletion, and is bounded.
    #[tokio::test]
    async fn cached_partitions_follow_declarations_and_deletions() {
        use crate::queue::QueueOptions;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = crate::StoreConfig::new(dir.path().to_path_buf());
        cfg.maintenance_interval = std::time::Duration::ZERO;
        let store = Store::open(cfg).expect("open");
        assert!(partitions(&store, "t").is_empty());
        assert!(partitions(&store, "t").is_empty(), "the cached negative answer");
        let p0 = store.declare_queue(&partition_queue("t", 0), QueueOptions::stream()).await.expect("p0").id;
        assert_eq!(partitions(&store, "t"), [p0], "a declaration is seen at once");
        let p1 = store.declare_queue(&partition_queue("t", 1), QueueOptions::stream()).await.expect("p1").id;
        assert_eq!(partitions(&store, "t"), [p0, p1]);
        store.delete_queue(p1).await.expect("delete");
        assert_eq!(partitions(&store, "t"), [p0], "a deletion is seen at once");
        for i in 0..PARTITION_CACHE_TOPICS_MAX + 10 {
            assert!(partitions(&store, &format!("none{i}")).is_empty());
        }
        let held = store.partition_cache().entries.lock().expect("lock").1.len();
        assert!(held <= PARTITION_CACHE_TOPICS_MAX, "{held} topics cached");
        assert_eq!(partitions(&store, "t"), [p0]);
    }
}
