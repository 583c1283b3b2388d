//! Retained messages: each retained topic is a stream in the core keeping its
//! newest message (`retention_count: 1`), named after the topic. A trie of the
//! retained topic names answers "which retained topics match this filter"
//! for wildcard subscribes; it is rebuilt from the queue names at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use polymq::queue::{QueueId, QueueOptions};
use polymq::record::Message;
use polymq::{Store, StoreError};
use tracing::warn;

use super::subs::{queue_name, RETAINED_PREFIX};

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    queue: Option<QueueId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.queue.is_none() && self.children.is_empty()
    }

    fn collect_all(&self, out: &mut Vec<QueueId>) {
        out.extend(self.queue);
        for c in self.children.values() {
            c.collect_all(out);
        }
    }

    fn collect(&self, filter: &[&str], first: bool, out: &mut Vec<QueueId>) {
        let Some((head, rest)) = filter.split_first() else {
            out.extend(self.queue);
            return;
        };
        // The `$` rule: a wildcard first level does not match `$` topics.
        let skip_dollar = |name: &str| first && name.starts_with('$');
        match *head {
            "#" => {
                // `a/#` matches `a` itself too.
                out.extend(self.queue.filter(|_| !first));
                for (name, c) in &self.children {
                    if !skip_dollar(name) {
                        c.collect_all(out);
                    }
                }
            }
            "+" => {
                for (name, c) in &self.children {
                    if !skip_dollar(name) {
                        c.collect(rest, false, out);
                    }
                }
            }
            word => {
                if let Some(c) = self.children.get(word) {
                    c.collect(rest, false, out);
                }
            }
        }
    }
}

/// The retained-message index and its store operations.
pub(crate) struct Retained {
    store: Arc<Store>,
    root: Mutex<Node>,
}

fn options() -> QueueOptions {
    QueueOptions { retention_count: Some(1), ..QueueOptions::stream() }
}

impl Retained {
    /// Rebuilds the index from the retained streams in the store.
    pub fn load(store: Arc<Store>) -> Result<Retained, StoreError> {
        let r = Retained { store, root: Mutex::new(Node::default()) };
        for (id, name) in r.store.list_queues() {
            if !name.starts_with(RETAINED_PREFIX) {
                continue;
            }
            match r.latest(id) {
                Some(msg) => match std::str::from_utf8(&msg.key) {
                    Ok(topic) => r.insert(topic, id),
                    Err(_) => warn!(queue = %name, "retained message with a non-UTF-8 topic ignored"),
                },
                None => continue,
            }
        }
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Node> {
        self.root.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, topic: &str) -> Option<QueueId> {
        fn go(node: &mut Node, levels: &[&str]) -> Option<QueueId> {
            let Some((head, rest)) = levels.split_first() else {
                return node.queue.take();
            };
            let child = node.children.get_mut(*head)?;
            let id = go(child, rest);
            if child.is_empty() {
                node.children.remove(*head);
            }
            id
        }
        let levels: Vec<&str> = topic.split('/').collect();
        go(&mut self.lock(), &levels)
    }

    /// The stream that keeps `topic`'s retained message (declared if new).
    /// The caller appends the message to it, together with its other targets
    /// (stored once), then calls [`Retained::insert`].
    pub async fn declare(&self, topic: &str) -> Result<QueueId, StoreError> {
        Ok(self.store.declare_queue(&queue_name(RETAINED_PREFIX, topic), options()).await?.id)
    }

    /// Records that `topic` has a retained message in stream `id`.
    pub fn insert(&self, topic: &str, id: QueueId) {
        let mut root = self.lock();
        let mut node = &mut *root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.queue = Some(id);
    }

    /// Clears `topic`'s retained message (a retained publish with an empty payload).
    pub async fn clear(&self, topic: &str) -> Result<(), StoreError> {
        self.remove(topic);
        if let Some(id) = self.store.queue_id(&queue_name(RETAINED_PREFIX, topic)) {
            self.store.delete_queue(id).await?;
        }
        Ok(())
    }

    /// The retained messages whose topics match `filter`.
    pub async fn matching(&self, filter: &str) -> Vec<Message> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut ids = Vec::new();
        self.lock().collect(&levels, true, &mut ids);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.latest_applied(id).await {
                out.push(m);
            }
        }
        out
    }

    /// The newest message of a retained stream (at start, nothing is in flight).
    fn latest(&self, id: QueueId) -> Option<Message> {
        let next = self.store.queue_info(id)?.next_offset;
        let read = self.store.read(id, next.checked_sub(1)?, 1, u64::MAX).ok()?;
        read.messages.into_iter().last().map(|m| m.message)
    }

    /// Like `latest`, but a retained publish whose offset is assigned and
    /// whose record the log has not applied yet is waited for. It happens: a
    /// message also routed to transient queues reaches their consumers before
    /// the log has written it, so a subscriber that reacts to it can ask for
    /// the retained copy inside that window (seen with a will under load).
    async fn latest_applied(&self, id: QueueId) -> Option<Message> {
        let next = self.store.queue_info(id)?.next_offset;
        let read = self.store.read_wait(id, next.checked_sub(1)?, 1, u64::MAX, RETAINED_APPLY_WAIT).await.ok()?;
        read.messages.into_iter().last().map(|m| m.message)
    }
}

/// How long a subscribe waits for a retained message the log is still writing.
const RETAINED_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trie_answers_wildcards_with_the_dollar_rule() {
        let mut root = Node::default();
        let topics = ["a", "a/b", "a/b/c", "a/x/c", "$SYS/up", "b"];
        for (i, t) in topics.iter().enumerate() {
            let mut n = &mut root;
            for l in t.split('/') {
                n = n.children.entry(l.into()).or_default();
            }
            n.queue = Some(QueueId(i as u64));
        }
        let q = |f: &str| {
            let levels: Vec<&str> = f.split('/').collect();
            let mut out = Vec::new();
            root.collect(&levels, true, &mut out);
            let mut names: Vec<&str> = out.into_iter().map(|id| topics[id.0 as usize]).collect();
            names.sort();
            names
        };
        assert_eq!(q("#"), ["a", "a/b", "a/b/c", "a/x/c", "b"]);
        assert_eq!(q("a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(q("a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(q("+"), ["a", "b"]);
        assert_eq!(q("$SYS/#"), ["$SYS/up"]);
        assert_eq!(q("a/b"), ["a/b"]);
    }
}
