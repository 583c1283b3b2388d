//! Idempotent producers: producer id allocation (durable) and, per
//! (producer id, partition), the sequence ranges of the last five batches,
//! which is what Kafka keeps: a retried batch is answered with its original
//! base offset instead of being appended twice, a gap is refused.
//!
//! The ids come from a counter kept as a group offset of a meta stream (one
//! durable record per allocation; the counter moves before the id is handed
//! out, so a crash can skip ids but never reuse one). Sequence state lives in
//! memory and is rebuilt lazily after a restart from the tail of the
//! partition: every stored batch carries its producer id, epoch and base
//! sequence in its header.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use polymq::queue::{QueueId, QueueOptions};
use polymq::{Store, StoreError};
use polymq_formats::record_batch::FORMAT as FORMAT_KAFKA_BATCH;

use crate::batch;

/// Batches remembered per producer and partition (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence is 5).
pub const RECENT_BATCHES: usize = 5;
/// Offsets at the tail of a partition read to rebuild a producer's state.
const REBUILD_OFFSETS: u64 = 1000;
const REBUILD_BYTES: u64 = 32 * 1024 * 1024;

/// The stream whose group offset is the next producer id.
pub const META_QUEUE: &str = "__polymq_kafka_meta";
const NEXT_PRODUCER_ID: &str = "kafka.next_producer_id";

pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;

/// What to do with a batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Append,
    /// Already stored at this base offset: answer success with it.
    Duplicate(u64),
    Refuse(i16),
}

#[derive(Debug, Default)]
struct PartitionState {
    epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    recent: VecDeque<(i32, i32, u64)>,
}

impl PartitionState {
    fn check(&self, epoch: i16, first: i32, last: i32) -> Check {
        if epoch < self.epoch {
            return Check::Refuse(INVALID_PRODUCER_EPOCH);
        }
        if epoch > self.epoch || self.recent.is_empty() {
            // A new epoch starts its sequences at 0.
            return if epoch > self.epoch && first != 0 { Check::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER) } else { Check::Append };
        }
        if let Some(&(_, _, offset)) = self.recent.iter().find(|(f, l, _)| *f == first && *l == last) {
            return Check::Duplicate(offset);
        }
        let newest = self.recent.back().map(|r| r.1).unwrap_or(-1);
        let expected = if newest == i32::MAX { 0 } else { newest + 1 };
        if first == expected {
            Check::Append
        } else {
            Check::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER)
        }
    }

    fn record(&mut self, epoch: i16, first: i32, last: i32, offset: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.recent.clear();
        }
        self.recent.push_back((first, last, offset));
        while self.recent.len() > RECENT_BATCHES {
            self.recent.pop_front();
        }
    }
}

pub struct Producers {
    states: Mutex<HashMap<(i64, QueueId), PartitionState>>,
    /// Held from the sequence check to the hand-off to the log, so two
    /// connections of one producer cannot both pass the check for one batch.
    pub append: tokio::sync::Mutex<()>,
    /// Serializes id allocation.
    alloc: tokio::sync::Mutex<()>,
    /// Lowest id handed out since start: any lower id may have state in the
    /// log from before the restart.
    first_this_run: AtomicI64,
}

impl Default for Producers {
    fn default() -> Self {
        Producers {
            states: Mutex::new(HashMap::new()),
            append: tokio::sync::Mutex::new(()),
            alloc: tokio::sync::Mutex::new(()),
            first_this_run: AtomicI64::new(i64::MAX),
        }
    }
}

impl Producers {
    /// A new producer id, durable before it is returned.
    pub async fn allocate(&self, store: &Store) -> Result<i64, StoreError> {
        let _one = self.alloc.lock().await;
        let meta = store.declare_queue(META_QUEUE, QueueOptions::stream()).await?.id;
        let next = store.committed_offset(NEXT_PRODUCER_ID, meta).unwrap_or(0);
        store.commit_offset(NEXT_PRODUCER_ID, meta, next + 1).await?;
        let id = next as i64;
        self.first_this_run.fetch_min(id, Ordering::AcqRel);
        Ok(id)
    }

    /// Checks a batch of producer `pid` against the partition's state,
    /// rebuilding that state from the partition's tail first if the producer
    /// may have written before a restart.
    pub fn check(&self, store: &Store, q: QueueId, h: &batch::BatchHeader) -> Check {
        let key = (h.producer_id, q);
        let known = self.states.lock().map(|s| s.contains_key(&key)).unwrap_or(false);
        if !known && h.producer_id < self.first_this_run.load(Ordering::Acquire) {
            self.rebuild(store, q, h.producer_id);
        }
        let Ok(states) = self.states.lock() else { return Check::Append };
        match states.get(&key) {
            Some(s) => s.check(h.producer_epoch, h.base_sequence, h.last_sequence()),
            // Unknown (new, or its batches are past retention): accepted, as
            // Kafka does since KIP-360 for a producer whose state expired.
            None => Check::Append,
        }
    }

    pub fn record(&self, q: QueueId, h: &batch::BatchHeader, base_offset: u64) {
        if let Ok(mut states) = self.states.lock() {
            states.entry((h.producer_id, q)).or_default().record(h.producer_epoch, h.base_sequence, h.last_sequence(), base_offset);
        }
    }

    /// Undoes [`Producers::record`] for a batch whose write failed after the
    /// hand-off (a full disk): its retry must be appended, not answered as
    /// a duplicate of something the log does not hold.
    pub fn forget(&self, q: QueueId, h: &batch::BatchHeader, base_offset: u64) {
        if let Ok(mut states) = self.states.lock() {
            if let Some(s) = states.get_mut(&(h.producer_id, q)) {
                s.recent.retain(|r| *r != (h.base_sequence, h.last_sequence(), base_offset));
            }
        }
    }

    fn rebuild(&self, store: &Store, q: QueueId, pid: i64) {
        let Some(info) = store.queue_info(q) else { return };
        let from = info.next_offset.saturating_sub(REBUILD_OFFSETS).max(info.start_offset);
        let Ok(read) = store.read(q, from, REBUILD_OFFSETS as usize, REBUILD_BYTES) else { return };
        let mut state = PartitionState::default();
        let mut found = false;
        for m in read.messages {
            if m.message.format != FORMAT_KAFKA_BATCH {
                continue;
            }
            let Some(h) = batch::header(&m.message.payload) else { continue };
            if h.producer_id == pid && h.base_sequence >= 0 {
                state.record(h.producer_epoch, h.base_sequence, h.last_sequence(), m.offset);
                found = true;
            }
        }
        if found {
            if let Ok(mut states) = self.states.lock() {
                states.entry((pid, q)).or_insert(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut s = PartitionState::default();
        assert_eq!(s.check(0, 0, 4), Check::Append);
        s.record(0, 0, 4, 100);
        assert_eq!(s.check(0, 5, 9), Check::Append);
        s.record(0, 5, 9, 105);
        assert_eq!(s.check(0, 0, 4), Check::Duplicate(100), "a retry of an older batch");
        assert_eq!(s.check(0, 5, 9), Check::Duplicate(105));
        assert_eq!(s.check(0, 11, 12), Check::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER), "a gap");
        assert_eq!(s.check(1, 3, 4), Check::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER), "a new epoch starts at 0");
        assert_eq!(s.check(1, 0, 0), Check::Append);
        s.record(1, 0, 0, 110);
        assert_eq!(s.check(0, 10, 10), Check::Refuse(INVALID_PRODUCER_EPOCH), "a fenced epoch");
        for i in 1..=6 {
            s.record(1, i, i, 110 + i as u64);
        }
        assert_eq!(s.recent.len(), RECENT_BATCHES);
        assert_eq!(s.check(1, 1, 1), Check::Refuse(OUT_OF_ORDER_SEQUENCE_NUMBER), "forgotten: older than the last five");
    }

    #[test]
    fn sequences_wrap() {
        let mut s = PartitionState::default();
        s.record(0, i32::MAX - 1, i32::MAX, 7);
        assert_eq!(s.check(0, 0, 3), Check::Append);
    }
}
