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
pub fn partitions(store: &Store, topic: &str) -> Vec<QueueId> {
    let mut out = Vec::new();
    while (out.len() as u32) < PARTITIONS_MAX {
        match store.queue_id(&partition_queue(topic, out.len() as u32)) {
            Some(id) => out.push(id),
            None => break,
        }
    }
    out
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
}
