//! Consumption by offset: an offset -> position index of whole batches,
//! with retention by time and size.
//!
//! The index is kept in blocks: the newest [`BLOCK_BATCHES`] batches (what a
//! tail reader asks for) are plain structs; older batches are packed into
//! blocks with a small header each (first offset, first position, largest
//! timestamp, bytes, count) and the batches as delta-encoded varints. A
//! lookup binary-searches the headers (a sparse index, as Kafka's
//! `index.interval.bytes` is) and then decodes the one block it lands in, in
//! memory: the commit log is shared by every queue, so a forward scan of the
//! log from a sparse entry would read every other queue's records in between.
//! Every batch stays known exactly, which compaction (copies per batch), the
//! live-bytes count per segment and retention need. A packed batch costs
//! about 6–9 bytes instead of 32 (plus the deque's slack), see
//! [`StreamIndex::heap_bytes`] and the tests.

use std::collections::VecDeque;

use super::{IndexEntry, QueueOptions};

/// Batches per packed block; also the most batches kept unpacked at the tail.
pub const BLOCK_BATCHES: usize = 128;

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

/// Packed batches in offset order. Each batch is five varints relative to
/// the batch before it (the first relative to the header): offset delta,
/// span, position delta (zigzag: compaction copies move batches forward),
/// total, timestamp delta (zigzag, running maximum before `rebuild` may dip).
#[derive(Debug)]
struct Block {
    first_offset: u64,
    first_pos: u64,
    first_ts: u64,
    /// Largest `max_ts` in the block.
    max_ts: u64,
    /// Offset after the last batch (`offset + span`).
    end_offset: u64,
    bytes: u64,
    count: u32,
    data: Box<[u8]>,
}

impl Block {
    fn encode(batches: &[StreamBatch]) -> Option<Block> {
        let first = batches.first()?;
        let last = batches.last()?;
        let mut data = Vec::with_capacity(batches.len() * 8);
        let (mut offset, mut pos, mut ts) = (first.offset, first.pos, first.max_ts);
        for b in batches {
            put_varint(&mut data, b.offset - offset);
            put_varint(&mut data, b.span as u64);
            put_varint(&mut data, zigzag(b.pos.wrapping_sub(pos) as i64));
            put_varint(&mut data, b.total as u64);
            put_varint(&mut data, zigzag(b.max_ts.wrapping_sub(ts) as i64));
            (offset, pos, ts) = (b.offset, b.pos, b.max_ts);
        }
        Some(Block {
            first_offset: first.offset,
            first_pos: first.pos,
            first_ts: first.max_ts,
            max_ts: batches.iter().map(|b| b.max_ts).max().unwrap_or(0),
            end_offset: last.offset + last.span as u64,
            bytes: batches.iter().map(|b| b.total as u64).sum(),
            count: batches.len() as u32,
            data: data.into_boxed_slice(),
        })
    }

    fn decode(&self) -> Vec<StreamBatch> {
        let mut out = Vec::with_capacity(self.count as usize);
        let (mut offset, mut pos, mut ts) = (self.first_offset, self.first_pos, self.first_ts);
        let mut at = 0;
        let d = &self.data[..];
        for _ in 0..self.count {
            offset += get_varint(d, &mut at);
            let span = get_varint(d, &mut at) as u32;
            pos = pos.wrapping_add(unzigzag(get_varint(d, &mut at)) as u64);
            let total = get_varint(d, &mut at) as u32;
            ts = ts.wrapping_add(unzigzag(get_varint(d, &mut at)) as u64);
            out.push(StreamBatch { offset, span, total, pos, max_ts: ts });
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint this module wrote (the data never comes from outside).
fn get_varint(d: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&byte) = d.get(*at) {
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

#[derive(Debug, Default)]
pub(super) struct StreamIndex {
    /// Packed, older batches.
    blocks: VecDeque<Block>,
    /// The newest batches, unpacked: fewer than [`BLOCK_BATCHES`] after a push.
    tail: Vec<StreamBatch>,
    /// Stored bytes of every batch.
    bytes: u64,
    count: u64,
    /// Sum of the blocks' `data` lengths (heap accounting).
    packed_bytes: u64,
}

impl StreamIndex {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Batches indexed.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Heap bytes this index holds (its own accounting: block headers and
    /// packed data, the unpacked tail's capacity).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> u64 {
        (self.blocks.capacity() * std::mem::size_of::<Block>() + self.tail.capacity() * std::mem::size_of::<StreamBatch>()) as u64
            + self.packed_bytes
    }

    pub fn start_offset(&self, next: u64) -> u64 {
        self.blocks.front().map(|b| b.first_offset).or_else(|| self.tail.first().map(|b| b.offset)).unwrap_or(next)
    }

    /// Every batch in offset order (decodes block by block).
    fn iter(&self) -> impl Iterator<Item = StreamBatch> + '_ {
        self.blocks.iter().flat_map(|b| b.decode()).chain(self.tail.iter().copied())
    }

    /// Batches from block `i` on (the tail after the blocks) in offset order.
    fn iter_from_block(&self, i: usize) -> impl Iterator<Item = StreamBatch> + '_ {
        self.blocks.iter().skip(i).flat_map(|b| b.decode()).chain(self.tail.iter().copied())
    }

    pub fn positions(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.iter().map(|b| (b.pos, b.total))
    }

    pub fn entries_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.iter().filter(move |b| b.pos >= from && b.pos < to).map(|b| (b.offset, b.pos, b.total))
    }

    fn last(&self) -> Option<StreamBatch> {
        self.tail.last().copied().or_else(|| self.blocks.back().and_then(|b| b.decode().last().copied()))
    }

    /// Replaces block `i` with `batches` (re-packed; removed if empty; split
    /// into blocks of [`BLOCK_BATCHES`] once it holds twice that, so copies
    /// replayed into the middle never grow one block without bound).
    fn replace_block(&mut self, i: usize, batches: &[StreamBatch]) {
        let Some(old) = self.blocks.get(i) else { return };
        self.packed_bytes -= old.data.len() as u64;
        if batches.len() >= 2 * BLOCK_BATCHES {
            self.blocks.remove(i);
            for (k, chunk) in batches.chunks(BLOCK_BATCHES).enumerate() {
                if let Some(b) = Block::encode(chunk) {
                    self.packed_bytes += b.data.len() as u64;
                    self.blocks.insert(i + k, b);
                }
            }
            return;
        }
        match Block::encode(batches) {
            Some(b) => {
                self.packed_bytes += b.data.len() as u64;
                self.blocks[i] = b;
            }
            None => {
                self.blocks.remove(i);
            }
        }
    }

    /// Packs the tail into a block once it is full.
    fn pack_tail(&mut self) {
        if self.tail.len() < BLOCK_BATCHES {
            return;
        }
        if let Some(b) = Block::encode(&self.tail) {
            self.packed_bytes += b.data.len() as u64;
            self.blocks.push_back(b);
        }
        self.tail.clear();
    }

    pub fn push(&mut self, e: &IndexEntry<'_>) {
        let last = self.last();
        let max_ts = last.map(|b| b.max_ts.max(e.timestamp_ms)).unwrap_or(e.timestamp_ms);
        let mut b = StreamBatch { offset: e.offset, span: e.span.max(1), total: e.total, pos: e.pos, max_ts };
        match last {
            Some(last) if last.offset >= e.offset => {
                // A relocated copy replayed after newer batches: keep offset order
                // (rebuild() recomputes the running timestamps from its own).
                b.max_ts = e.timestamp_ms;
                if self.tail.first().is_some_and(|t| t.offset <= e.offset) || self.blocks.is_empty() {
                    let i = self.tail.partition_point(|x| x.offset < e.offset);
                    if self.tail.get(i).is_some_and(|x| x.offset == e.offset) {
                        return;
                    }
                    self.tail.insert(i, b);
                } else {
                    let i = self.blocks.partition_point(|x| x.first_offset <= e.offset).saturating_sub(1);
                    let mut batches = self.blocks[i].decode();
                    let j = batches.partition_point(|x| x.offset < e.offset);
                    if batches.get(j).is_some_and(|x| x.offset == e.offset) {
                        return;
                    }
                    batches.insert(j, b);
                    self.replace_block(i, &batches);
                }
            }
            _ => self.tail.push(b),
        }
        self.bytes += e.total as u64;
        self.count += 1;
        self.pack_tail();
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.pos_of(offset).is_some()
    }

    /// Where batch `offset` lives: `Err(i)` block `i` (if any holds it),
    /// `Ok(())` the tail.
    fn block_of(&self, offset: u64) -> Result<(), usize> {
        if self.tail.first().is_some_and(|t| t.offset <= offset) || self.blocks.is_empty() {
            return Ok(());
        }
        Err(self.blocks.partition_point(|x| x.first_offset <= offset).saturating_sub(1))
    }

    pub fn pos_of(&self, offset: u64) -> Option<u64> {
        let find = |v: &[StreamBatch]| {
            let i = v.partition_point(|x| x.offset < offset);
            v.get(i).filter(|b| b.offset == offset).map(|b| b.pos)
        };
        match self.block_of(offset) {
            Ok(()) => find(&self.tail),
            Err(i) => find(&self.blocks[i].decode()),
        }
    }

    pub fn relocate(&mut self, offset: u64, old_pos: Option<u64>, new_pos: u64, new_total: u32) -> Option<(u64, u32)> {
        let apply = |v: &mut [StreamBatch]| {
            let i = v.partition_point(|x| x.offset < offset);
            let b = v.get_mut(i).filter(|b| b.offset == offset && old_pos.is_none_or(|p| b.pos == p))?;
            let old = (b.pos, b.total);
            b.pos = new_pos;
            b.total = new_total;
            Some(old)
        };
        let old = match self.block_of(offset) {
            Ok(()) => apply(&mut self.tail)?,
            Err(i) => {
                let mut batches = self.blocks[i].decode();
                let old = apply(&mut batches)?;
                self.replace_block(i, &batches);
                old
            }
        };
        self.bytes = self.bytes - old.1 as u64 + new_total as u64;
        Some(old)
    }

    /// After replay: the running maximum timestamps, recomputed in order.
    pub fn rebuild(&mut self) {
        let mut max = 0;
        for i in 0..self.blocks.len() {
            let mut batches = self.blocks[i].decode();
            for b in batches.iter_mut() {
                max = max.max(b.max_ts);
                b.max_ts = max;
            }
            self.replace_block(i, &batches);
        }
        for b in self.tail.iter_mut() {
            max = max.max(b.max_ts);
            b.max_ts = max;
        }
    }

    /// The first block that may hold offsets at or after `from`.
    fn first_block_reaching(&self, from: u64) -> usize {
        self.blocks.partition_point(|b| b.end_offset <= from)
    }

    /// Batches from the one holding `from`, up to the limits (always at least
    /// one batch if any is there, so a batch larger than `max_bytes` still
    /// makes progress, as Kafka does).
    pub fn read(&self, from: u64, max_batches: usize, max_bytes: u64, next: u64) -> StreamRead {
        let start = self.start_offset(next);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for b in self.iter_from_block(self.first_block_reaching(from)).filter(|b| b.offset + b.span as u64 > from) {
            if out.len() >= max_batches || (!out.is_empty() && bytes + b.total as u64 > max_bytes) {
                break;
            }
            bytes += b.total as u64;
            out.push(b);
        }
        StreamRead { batches: out, start_offset: start, next_offset: next }
    }

    /// Bytes from the batch holding `from` on, stopping once `cap` is reached.
    pub fn bytes_from(&self, from: u64, cap: u64) -> u64 {
        let i = self.first_block_reaching(from);
        let mut bytes = 0u64;
        if let Some(b) = self.blocks.get(i) {
            bytes += b.decode().iter().filter(|b| b.offset + b.span as u64 > from).map(|b| b.total as u64).sum::<u64>();
        }
        for b in self.blocks.iter().skip(i + 1) {
            if bytes >= cap {
                return bytes;
            }
            bytes += b.bytes;
        }
        for b in self.tail.iter().filter(|b| b.offset + b.span as u64 > from) {
            if bytes >= cap {
                break;
            }
            bytes += b.total as u64;
        }
        bytes
    }

    pub fn offset_for_timestamp(&self, ts: u64) -> Option<u64> {
        let i = self.blocks.partition_point(|b| b.max_ts < ts);
        self.iter_from_block(i).find(|b| b.max_ts >= ts).map(|b| b.offset)
    }

    /// Drops whole batches past the time or size limit; returns their (position, bytes).
    pub fn apply_retention(&mut self, opts: &QueueOptions, now_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let over = |bytes: u64, count: u64, front: &StreamBatch| {
            let too_big = opts.retention_bytes.is_some_and(|m| bytes > m);
            let too_old = opts.retention_ms.is_some_and(|m| front.max_ts.saturating_add(m) < now_ms);
            let too_many = opts.retention_count.is_some_and(|m| count > m);
            too_big || too_old || too_many
        };
        loop {
            let (mut batches, packed) = match self.blocks.front() {
                Some(b) => (b.decode(), true),
                None => (std::mem::take(&mut self.tail), false),
            };
            let mut dropped = 0;
            while let Some(front) = batches.get(dropped) {
                if !over(self.bytes, self.count, front) {
                    break;
                }
                self.bytes -= front.total as u64;
                self.count -= 1;
                out.push((front.pos, front.total));
                dropped += 1;
            }
            let whole = dropped == batches.len();
            if packed {
                if dropped > 0 {
                    self.replace_block(0, &batches[dropped..]);
                }
                if whole && !self.is_empty() {
                    continue;
                }
            } else {
                batches.drain(..dropped);
                self.tail = batches;
            }
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, pos: u64, total: u32, ts: u64) -> IndexEntry<'static> {
        IndexEntry { offset, span: 1, pos, total, timestamp_ms: ts, deliver_at_ms: 0, priority: 0, group: None }
    }

    /// The index as it was before packing: one struct per batch.
    fn dense(n: u64) -> Vec<StreamBatch> {
        (0..n).map(|i| StreamBatch { offset: i, span: 1, total: 100, pos: i * 300, max_ts: 1_000 + i / 10 }).collect()
    }

    fn filled(n: u64) -> StreamIndex {
        let mut s = StreamIndex::default();
        for b in dense(n) {
            s.push(&entry(b.offset, b.pos, b.total, b.max_ts));
        }
        s
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut d = Vec::new();
            put_varint(&mut d, v);
            let mut at = 0;
            assert_eq!(get_varint(&d, &mut at), v);
            assert_eq!(at, d.len());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn every_batch_reads_back_across_blocks_and_the_tail() {
        let n = 5 * BLOCK_BATCHES as u64 + 17;
        let s = filled(n);
        assert_eq!(s.iter().collect::<Vec<_>>(), dense(n));
        assert_eq!(s.len(), n);
        assert_eq!(s.bytes(), 100 * n);
        for o in [0, 1, 127, 128, 129, 300, n - 1] {
            assert_eq!(s.pos_of(o), Some(o * 300), "offset {o}");
            let r = s.read(o, 3, u64::MAX, n);
            assert_eq!(r.batches, dense(n)[o as usize..(o as usize + 3).min(n as usize)].to_vec(), "read from {o}");
            assert_eq!(s.bytes_from(o, u64::MAX), (n - o) * 100);
        }
        assert_eq!(s.pos_of(n), None);
        assert_eq!(s.offset_for_timestamp(0), Some(0));
        assert_eq!(s.offset_for_timestamp(1_013), Some(130), "the first batch at 1013 ms is in the second block");
        assert_eq!(s.offset_for_timestamp(1_000 + n), None);
        assert_eq!(s.entries_in(300 * 200, 300 * 202).collect::<Vec<_>>(), vec![(200, 60_000, 100), (201, 60_300, 100)]);
    }

    #[test]
    fn relocations_and_late_copies_land_inside_packed_blocks() {
        let n = 3 * BLOCK_BATCHES as u64;
        let mut s = filled(n);
        assert_eq!(s.relocate(5, Some(1), 9_999_999, 90), None, "moved on: unchanged");
        assert_eq!(s.relocate(5, Some(1_500), 9_999_999, 90), Some((1_500, 100)));
        assert_eq!(s.pos_of(5), Some(9_999_999));
        assert_eq!(s.bytes(), 100 * n - 10);
        // A replayed copy of an offset already held is ignored, one missing is inserted.
        let mut t = StreamIndex::default();
        for b in dense(n).into_iter().filter(|b| b.offset != 7) {
            t.push(&entry(b.offset, b.pos, b.total, b.max_ts));
        }
        t.push(&entry(7, 2_100, 100, 1_000));
        t.push(&entry(8, 1, 1, 1));
        t.rebuild();
        assert_eq!(t.iter().collect::<Vec<_>>(), dense(n));
    }

    #[test]
    fn copies_replayed_before_the_originals_keep_blocks_bounded() {
        // Replay after compaction: newer batches first, then the copies of
        // the older ones, each landing before everything held.
        let n = 4 * BLOCK_BATCHES as u64;
        let all = dense(n);
        let mut s = StreamIndex::default();
        for b in &all[(n / 2) as usize..] {
            s.push(&entry(b.offset, b.pos, b.total, b.max_ts));
        }
        for b in &all[..(n / 2) as usize] {
            s.push(&entry(b.offset, b.pos, b.total, b.max_ts));
        }
        s.rebuild();
        assert_eq!(s.iter().collect::<Vec<_>>(), all);
        assert!(
            s.blocks.iter().all(|b| (b.count as usize) < 2 * BLOCK_BATCHES),
            "{:?}",
            s.blocks.iter().map(|b| b.count).collect::<Vec<_>>()
        );
        assert_eq!(s.offset_for_timestamp(1_013), Some(130));
    }

    #[test]
    fn retention_drops_from_the_front_through_blocks() {
        let n = 3 * BLOCK_BATCHES as u64 + 10;
        let mut s = filled(n);
        let opts = QueueOptions { retention_count: Some(200), ..QueueOptions::default() };
        let dropped = s.apply_retention(&opts, 0);
        assert_eq!(dropped.len() as u64, n - 200);
        assert_eq!(dropped[0], (0, 100));
        assert_eq!(s.start_offset(n), n - 200);
        assert_eq!(s.iter().collect::<Vec<_>>(), dense(n)[(n - 200) as usize..].to_vec());
        let opts = QueueOptions { retention_bytes: Some(0), ..QueueOptions::default() };
        assert_eq!(s.apply_retention(&opts, 0).len(), 200);
        assert!(s.is_empty());
        assert_eq!(s.start_offset(n), n);
    }

    /// One million single-record batches: the index's own byte count, before
    /// (one 32-byte struct per batch in a deque that doubles) and after.
    #[test]
    fn a_million_batches_cost_a_few_bytes_each() {
        let n = 1_000_000u64;
        let mut s = StreamIndex::default();
        let mut before = VecDeque::new();
        for i in 0..n {
            // Interleaved with other queues' records: ~1 KiB apart in the log.
            let e = entry(i, i * 1_024 + (i % 7) * 13, 80 + (i % 40) as u32, 1_700_000_000_000 + i / 3);
            s.push(&e);
            before.push_back(StreamBatch { offset: i, span: 1, total: e.total, pos: e.pos, max_ts: e.timestamp_ms });
        }
        let dense_bytes = (before.capacity() * std::mem::size_of::<StreamBatch>()) as u64;
        let packed = s.heap_bytes();
        println!(
            "stream index, {n} batches: dense {dense_bytes} B ({:.1} B/batch), packed {packed} B ({:.1} B/batch)",
            dense_bytes as f64 / n as f64,
            packed as f64 / n as f64
        );
        assert!(packed * 3 < dense_bytes, "packed {packed} B vs dense {dense_bytes} B");
        assert!(packed < n * 10, "{packed} B for {n} batches");
        assert_eq!(s.read(777_777, 1, u64::MAX, n).batches[0], before[777_777]);
    }
}
