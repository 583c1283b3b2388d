//! Consumption by offset: a dense offset -> position index of whole batches,
//! with retention by time and size.

use std::collections::VecDeque;

use super::{IndexEntry, QueueOptions};

/// One stored record of a stream; spans `span` offsets (a Kafka batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamBatch {
    pub offset: u64,
    pub span: u32,
    pub total: u32,
    pub pos: u64,
    /// Largest timestamp up to and including this batch, so lookups by time
    /// can binary-search even when producers' clocks disagree.
    pub max_ts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRead {
    pub batches: Vec<StreamBatch>,
    pub start_offset: u64,
    pub next_offset: u64,
}

#[derive(Debug, Default)]
pub(super) struct StreamIndex {
    batches: VecDeque<StreamBatch>,
    bytes: u64,
}

impl StreamIndex {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn start_offset(&self, next: u64) -> u64 {
        self.batches.front().map(|b| b.offset).unwrap_or(next)
    }
    pub fn positions(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.batches.iter().map(|b| (b.pos, b.total))
    }

    pub fn entries_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.batches.iter().filter(move |b| b.pos >= from && b.pos < to).map(|b| (b.offset, b.pos, b.total))
    }

    pub fn push(&mut self, e: &IndexEntry<'_>) {
        let max_ts = self.batches.back().map(|b| b.max_ts.max(e.timestamp_ms)).unwrap_or(e.timestamp_ms);
        self.bytes += e.total as u64;
        let b = StreamBatch { offset: e.offset, span: e.span.max(1), total: e.total, pos: e.pos, max_ts };
        match self.batches.back() {
            Some(last) if last.offset >= e.offset => {
                // A relocated copy replayed after newer batches: keep offset order
                // (rebuild() fixes the running timestamps afterwards).
                let i = self.batches.partition_point(|x| x.offset < e.offset);
                if self.batches.get(i).is_some_and(|x| x.offset == e.offset) {
                    self.bytes -= e.total as u64;
                    return;
                }
                self.batches.insert(i, b);
            }
            _ => self.batches.push_back(b),
        }
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.pos_of(offset).is_some()
    }

    pub fn pos_of(&self, offset: u64) -> Option<u64> {
        let i = self.batches.partition_point(|x| x.offset < offset);
        self.batches.get(i).filter(|b| b.offset == offset).map(|b| b.pos)
    }

    pub fn relocate(&mut self, offset: u64, old_pos: Option<u64>, new_pos: u64, new_total: u32) -> Option<(u64, u32)> {
        let i = self.batches.partition_point(|x| x.offset < offset);
        let b = self.batches.get_mut(i).filter(|b| b.offset == offset && old_pos.is_none_or(|p| b.pos == p))?;
        let old = (b.pos, b.total);
        self.bytes = self.bytes - b.total as u64 + new_total as u64;
        b.pos = new_pos;
        b.total = new_total;
        Some(old)
    }

    /// After replay: the running maximum timestamps, recomputed in order.
    pub fn rebuild(&mut self) {
        let mut max = 0;
        for b in self.batches.iter_mut() {
            max = max.max(b.max_ts);
            b.max_ts = max;
        }
    }

    /// Batches from the one holding `from`, up to the limits (always at least
    /// one batch if any is there, so a batch larger than `max_bytes` still
    /// makes progress, as Kafka does).
    pub fn read(&self, from: u64, max_batches: usize, max_bytes: u64, next: u64) -> StreamRead {
        let start = self.start_offset(next);
        let i = self.batches.partition_point(|b| b.offset + b.span as u64 <= from);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for b in self.batches.iter().skip(i) {
            if out.len() >= max_batches || (!out.is_empty() && bytes + b.total as u64 > max_bytes) {
                break;
            }
            bytes += b.total as u64;
            out.push(*b);
        }
        StreamRead { batches: out, start_offset: start, next_offset: next }
    }

    /// Bytes from the batch holding `from` on, stopping once `cap` is reached.
    pub fn bytes_from(&self, from: u64, cap: u64) -> u64 {
        let i = self.batches.partition_point(|b| b.offset + b.span as u64 <= from);
        let mut bytes = 0u64;
        for b in self.batches.iter().skip(i) {
            if bytes >= cap {
                break;
            }
            bytes += b.total as u64;
        }
        bytes
    }

    pub fn offset_for_timestamp(&self, ts: u64) -> Option<u64> {
        let i = self.batches.partition_point(|b| b.max_ts < ts);
        self.batches.get(i).map(|b| b.offset)
    }

    /// Drops whole batches past the time or size limit; returns their (position, bytes).
    pub fn apply_retention(&mut self, opts: &QueueOptions, now_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while let Some(front) = self.batches.front() {
            let too_big = opts.retention_bytes.is_some_and(|m| self.bytes > m);
            let too_old = opts.retention_ms.is_some_and(|m| front.max_ts.saturating_add(m) < now_ms);
            let too_many = opts.retention_count.is_some_and(|m| self.batches.len() as u64 > m);
            if !(too_big || too_old || too_many) {
                break;
            }
            self.bytes -= front.total as u64;
            out.push((front.pos, front.total));
            self.batches.pop_front();
        }
        out
    }
}
