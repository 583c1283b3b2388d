//! Lightweight queues: the in-memory index over the log.
//!
//! A queue is a 56-byte slot in a chunked array plus its name; an idle queue
//! has nothing else (no file, no task, no collection). Only a queue holding
//! messages or in-flight deliveries gets a heap `Hot` part, and loses it again
//! when it drains. Everything here is plain state: no I/O, no clock (the
//! caller passes `now_ms`), so the same code replays the log at start-up and
//! serves live traffic, and tests drive time by hand.

mod options;
mod pop;
mod stream;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;

pub use options::{QueueKind, QueueOptions};
pub use pop::{DeadLetter, NackAction, NackOutcome, PopItem, PopOutcome, Receipt};
pub use stream::{StreamBatch, StreamRead};

use crate::limits::QUEUE_NAME_BYTES_MAX;
use crate::StoreError;
use pop::PopState;
use stream::StreamIndex;

/// A queue's identity: slot index (low 32 bits) and the slot's generation
/// (high 32), so an id of a deleted queue never reaches its slot's successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    pub const fn new(slot: u32, generation: u32) -> QueueId {
        QueueId(((generation as u64) << 32) | slot as u64)
    }
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// Transient queues carry a flag in their generation, so no id of a
    /// memory-only queue can ever equal the id of a durable queue, even
    /// after a restart reuses its slot (old log records name old ids).
    pub const fn is_transient(self) -> bool {
        self.generation() & TRANSIENT_GENERATION != 0
    }
}

const TRANSIENT_GENERATION: u32 = 1 << 31;

/// Slots are allocated in fixed chunks so growth never doubles a huge vector
/// (a doubling `Vec` of 10 M slots would waste up to half of it).
const CHUNK: usize = 4096;

#[derive(Default)]
struct Slot {
    name: Option<Box<str>>,
    generation: u32,
    opts: u32,
    /// Unix seconds of the last use, for idle expiry.
    last_active_s: u32,
    next_offset: u64,
    hot: Option<Box<Hot>>,
}

/// The part of a queue that exists only while it holds something.
#[derive(Default)]
pub(crate) struct Hot {
    pop: PopState,
    stream: StreamIndex,
}

impl Hot {
    fn is_idle(&self) -> bool {
        self.pop.is_empty() && self.stream.is_empty()
    }
}

/// One bit per slot: lets scans skip the slots (and whole chunks) that
/// cannot matter, so a pass over 10 M idle queues costs ~1.25 MB of words.
#[derive(Default)]
struct SlotBits(Vec<u64>);

impl SlotBits {
    fn set(&mut self, slot: u32, on: bool) {
        let (w, b) = (slot as usize / 64, slot % 64);
        if self.0.len() <= w {
            if !on {
                return;
            }
            self.0.resize(w + 1, 0);
        }
        if on {
            self.0[w] |= 1 << b;
        } else {
            self.0[w] &= !(1 << b);
        }
    }

    /// Whether any slot of chunk `c` is set.
    fn any_in_chunk(&self, c: usize) -> bool {
        let words = CHUNK / 64;
        self.0.iter().skip(c * words).take(words).any(|&w| w != 0)
    }

    /// The set slots of chunk `c`, as indexes within the chunk.
    fn in_chunk(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        let words = CHUNK / 64;
        self.0
            .iter()
            .enumerate()
            .skip(c * words)
            .take(words)
            .flat_map(move |(wi, &w)| (0..64).filter(move |b| w & (1u64 << b) != 0).map(move |b| wi * 64 + b - c * CHUNK))
    }
}

/// Public facts about a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub id: QueueId,
    pub name: String,
    pub options: QueueOptions,
    /// Next offset to be assigned.
    pub next_offset: u64,
    /// Streams: first retained offset. Queues: lowest unacked offset (or next_offset).
    pub start_offset: u64,
    pub ready: u64,
    pub inflight: u64,
    pub delayed: u64,
    pub stored_bytes: u64,
}

/// A change in the bytes of a log position that queues keep alive (+total
/// when indexed, -total when gone), so the store can tell live bytes per segment.
pub type LiveDelta = (u64, i64);

pub struct QueueTable {
    chunks: Vec<Box<[Slot]>>,
    names: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    free: Vec<u32>,
    slot_end: u32,
    count: usize,
    count_max: usize,
    options: Vec<QueueOptions>,
    options_index: HashMap<QueueOptions, u32>,
    /// Positions gained (+1) or lost (-1) by queues since the last drain.
    live: Vec<LiveDelta>,
    /// Queues with an idle TTL or stream retention: what maintenance visits.
    maintained: SlotBits,
    /// Queues with a heap part (holding something): what metrics visit.
    hot: SlotBits,
    /// Bumped whenever a name is added or removed, readable without the
    /// table's lock: caches of name lookups check it.
    names_version: Arc<AtomicU64>,
}

impl QueueTable {
    pub fn new(count_max: usize) -> QueueTable {
        QueueTable {
            chunks: Vec::new(),
            names: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            free: Vec::new(),
            slot_end: 0,
            count: 0,
            count_max,
            options: Vec::new(),
            options_index: HashMap::new(),
            live: Vec::new(),
            maintained: SlotBits::default(),
            hot: SlotBits::default(),
            names_version: Arc::default(),
        }
    }

    /// A handle on the version of the name table (see [`QueueTable::lookup`]).
    pub fn names_version(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.names_version)
    }

    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn slot(&self, slot: u32) -> Option<&Slot> {
        self.chunks.get(slot as usize / CHUNK).map(|c| &c[slot as usize % CHUNK])
    }
    fn slot_mut(&mut self, slot: u32) -> Option<&mut Slot> {
        self.chunks.get_mut(slot as usize / CHUNK).map(|c| &mut c[slot as usize % CHUNK])
    }
    fn live_slot(&self, id: QueueId) -> Option<&Slot> {
        self.slot(id.slot()).filter(|s| s.name.is_some() && s.generation == id.generation())
    }
    fn live_slot_mut(&mut self, id: QueueId) -> Result<&mut Slot, StoreError> {
        self.slot_mut(id.slot())
            .filter(|s| s.name.is_some() && s.generation == id.generation())
            .ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))
    }
    fn ensure_slot(&mut self, slot: u32) {
        while self.chunks.len() <= slot as usize / CHUNK {
            self.chunks.push((0..CHUNK).map(|_| Slot::default()).collect::<Vec<_>>().into_boxed_slice());
        }
    }

    fn intern_options(&mut self, opts: &QueueOptions) -> u32 {
        if let Some(&i) = self.options_index.get(opts) {
            return i;
        }
        let i = self.options.len() as u32;
        self.options.push(opts.clone());
        self.options_index.insert(opts.clone(), i);
        i
    }

    pub fn lookup(&self, name: &str) -> Option<QueueId> {
        let hash = self.hasher.hash_one(name);
        let chunks = &self.chunks;
        let name_of = |s: u32| chunks.get(s as usize / CHUNK).and_then(|c| c[s as usize % CHUNK].name.as_deref());
        let slot = *self.names.find(hash, |&s| name_of(s) == Some(name))?;
        let s = self.slot(slot)?;
        Some(QueueId::new(slot, s.generation))
    }

    /// Declares a queue, or finds it. `Ok((id, true))` when it was created.
    /// Redeclaring with different options is an error (AMQP 406 semantics).
    pub fn declare(&mut self, name: &str, opts: &QueueOptions, now_ms: u64) -> Result<(QueueId, bool), StoreError> {
        validate_name(name)?;
        if let Some(id) = self.lookup(name) {
            let s = self.live_slot(id).ok_or_else(|| StoreError::QueueNotFound(name.into()))?;
            if &self.options[s.opts as usize] != opts {
                return Err(StoreError::Inequivalent(name.into()));
            }
            self.touch(id, now_ms);
            return Ok((id, false));
        }
        if self.count >= self.count_max {
            return Err(StoreError::QueueLimit(self.count_max));
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.slot_end;
                self.slot_end = s.checked_add(1).ok_or(StoreError::QueueLimit(u32::MAX as usize))?;
                s
            }
        };
        let counter = self.slot(slot).map(|s| s.generation & !TRANSIENT_GENERATION).unwrap_or(0);
        let generation = if opts.transient { counter | TRANSIENT_GENERATION } else { counter };
        let id = QueueId::new(slot, generation);
        self.install(id, name, opts, now_ms, 0);
        Ok((id, true))
    }

    fn install(&mut self, id: QueueId, name: &str, opts: &QueueOptions, now_ms: u64, next_offset: u64) {
        let maintained = opts.idle_ttl_ms.is_some() || opts.has_retention();
        self.maintained.set(id.slot(), maintained);
        let opts = self.intern_options(opts);
        self.ensure_slot(id.slot());
        let hash = self.hasher.hash_one(name);
        {
            let chunks = &self.chunks;
            let hasher = &self.hasher;
            self.names.insert_unique(hash, id.slot(), |&s| {
                hasher.hash_one(chunks[s as usize / CHUNK][s as usize % CHUNK].name.as_deref().unwrap_or(""))
            });
        }
        self.names_version.fetch_add(1, Ordering::Release);
        if let Some(s) = self.slot_mut(id.slot()) {
            *s = Slot {
                name: Some(name.into()),
                generation: id.generation(),
                opts,
                last_active_s: (now_ms / 1000) as u32,
                next_offset,
                hot: None,
            };
        }
        self.count += 1;
    }

    /// Replays a declare record (or a snapshot entry): the id is the one the
    /// record carries; `next_offset` only ever moves forward.
    /// A declare of a queue that already exists under the same id replaces
    /// its options (that is how [`QueueTable::set_options`] is logged).
    pub fn restore_queue(&mut self, id: QueueId, name: &str, opts: &QueueOptions, next_offset: u64, now_ms: u64) {
        if let Some(existing) = self.lookup(name) {
            if existing == id {
                if let Ok(s) = self.live_slot_mut(id) {
                    s.next_offset = s.next_offset.max(next_offset);
                }
                if self.options(id) != Some(opts) {
                    let _ = self.set_options(id, opts);
                }
                return;
            }
            self.delete(existing);
        }
        self.ensure_slot(id.slot());
        if let Some(prev) = self.slot(id.slot()).filter(|s| s.name.is_some()).map(|s| s.generation) {
            // The slot's previous tenant was deleted in a record we did not see.
            self.delete(QueueId::new(id.slot(), prev));
        }
        self.install(id, name, opts, now_ms, next_offset);
        self.slot_end = self.slot_end.max(id.slot() + 1);
    }

    /// After replay: every slot below the high-water mark that is unused is
    /// free, and each queue's pop state and stream index are normalized.
    pub fn finish_replay(&mut self, now_ms: u64) {
        self.free = (0..self.slot_end).rev().filter(|&s| self.slot(s).is_none_or(|s| s.name.is_none())).collect();
        for c in 0..self.chunks.len() {
            for i in 0..CHUNK {
                let s = &mut self.chunks[c][i];
                let (Some(_), Some(hot)) = (&s.name, s.hot.as_mut()) else { continue };
                let opts = &self.options[s.opts as usize];
                hot.pop.rebuild(opts, now_ms);
                hot.stream.rebuild();
            }
        }
    }

    /// Every (queue, offset, position, bytes) index entry of one chunk's
    /// queues (see [`QueueTable::hot_chunks`]) at a log position in
    /// `[from, to)`, appended to `out`: compaction walks the table a chunk
    /// per lock hold.
    pub fn entries_in_chunk(&self, c: usize, from: u64, to: u64, out: &mut Vec<(QueueId, u64, u64, u32)>) {
        let Some(chunk) = self.chunks.get(c) else { return };
        for (i, s) in chunk.iter().enumerate() {
            let (Some(_), Some(h)) = (&s.name, &s.hot) else { continue };
            let id = QueueId::new((c * CHUNK + i) as u32, s.generation);
            out.extend(h.pop.entries_in(from, to).chain(h.stream.entries_in(from, to)).map(|(o, p, t)| (id, o, p, t)));
        }
    }

    /// The message at `offset` of `id` was copied from `old_pos` (None: from
    /// wherever it is, on replay) to `new_pos`. Returns false, changing
    /// nothing, if the entry is gone or has moved on.
    pub fn relocate(&mut self, id: QueueId, offset: u64, old_pos: Option<u64>, new_pos: u64, new_total: u32) -> bool {
        let Ok((hot, _)) = self.hot_mut(id) else { return false };
        let moved =
            hot.pop.relocate(offset, old_pos, new_pos, new_total).or_else(|| hot.stream.relocate(offset, old_pos, new_pos, new_total));
        match moved {
            Some((pos, total)) => {
                self.live.push((pos, -(total as i64)));
                self.live.push((new_pos, new_total as i64));
                true
            }
            None => {
                self.cool(id);
                false
            }
        }
    }

    /// Where the entry at `offset` of `id` is stored, if `id` still holds it.
    pub fn pos_of(&self, id: QueueId, offset: u64) -> Option<u64> {
        let h = self.live_slot(id)?.hot.as_ref()?;
        h.pop.pos_of(offset).or_else(|| h.stream.pos_of(offset))
    }

    /// Whether `id` holds the message at `offset` (replay of relocated copies).
    pub fn holds(&self, id: QueueId, offset: u64) -> bool {
        self.live_slot(id).and_then(|s| s.hot.as_ref()).is_some_and(|h| h.pop.contains(offset) || h.stream.contains(offset))
    }

    /// Calls `f(id, name, options, next_offset)` for every durable queue of
    /// chunk `c` (the metadata snapshot), borrowing instead of copying.
    pub fn for_each_durable_in_chunk(&self, c: usize, mut f: impl FnMut(QueueId, &str, &QueueOptions, u64)) {
        let Some(chunk) = self.chunks.get(c) else { return };
        for (i, s) in chunk.iter().enumerate() {
            if let Some(n) = s.name.as_deref().filter(|_| s.generation & TRANSIENT_GENERATION == 0) {
                f(QueueId::new((c * CHUNK + i) as u32, s.generation), n, &self.options[s.opts as usize], s.next_offset);
            }
        }
    }

    /// Every durable queue's identity (tests and admin; the snapshot streams instead).
    pub fn snapshot_queues(&self) -> Vec<QueueInfo> {
        let mut out = Vec::with_capacity(self.count);
        for c in 0..self.chunks.len() {
            self.for_each_durable_in_chunk(c, |id, name, opts, next| {
                out.push(QueueInfo {
                    id,
                    name: name.to_owned(),
                    options: opts.clone(),
                    next_offset: next,
                    start_offset: 0,
                    ready: 0,
                    inflight: 0,
                    delayed: 0,
                    stored_bytes: 0,
                });
            });
        }
        out
    }

    /// Calls `f` with the log position of every entry any queue holds.
    pub fn for_each_live_pos(&self, mut f: impl FnMut(u64, u32)) {
        for chunk in &self.chunks {
            for s in chunk.iter() {
                if let Some(h) = &s.hot {
                    h.pop.positions().chain(h.stream.positions()).for_each(|(p, t)| f(p, t));
                }
            }
        }
    }

    /// Deletes a queue; its stored entries stop being live.
    pub fn delete(&mut self, id: QueueId) -> bool {
        let Some(s) = self.slot_mut(id.slot()) else { return false };
        if s.name.is_none() || s.generation != id.generation() {
            return false;
        }
        let name = s.name.take().unwrap_or_default();
        let hot = s.hot.take();
        self.maintained.set(id.slot(), false);
        self.hot.set(id.slot(), false);
        let Some(s) = self.slot_mut(id.slot()) else { return false };
        s.generation = (s.generation & !TRANSIENT_GENERATION).wrapping_add(1) & !TRANSIENT_GENERATION;
        s.next_offset = 0;
        let hash = self.hasher.hash_one(&*name);
        if let Ok(e) = self.names.find_entry(hash, |&x| x == id.slot()) {
            e.remove();
        }
        self.names_version.fetch_add(1, Ordering::Release);
        if let Some(hot) = hot {
            for (pos, total) in hot.pop.positions().chain(hot.stream.positions()) {
                self.live.push((pos, -(total as i64)));
            }
        }
        self.free.push(id.slot());
        self.count -= 1;
        true
    }

    pub fn name(&self, id: QueueId) -> Option<&str> {
        self.live_slot(id).and_then(|s| s.name.as_deref())
    }
    /// Replaces a queue's options (e.g. a stream's retention). The kind and
    /// the transient flag are fixed at declare time.
    pub fn set_options(&mut self, id: QueueId, opts: &QueueOptions) -> Result<(), StoreError> {
        let current = self.options(id).ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?;
        if current.kind != opts.kind || current.transient != opts.transient {
            return Err(StoreError::InvalidArgument("a queue's kind and durability cannot change after declare".into()));
        }
        let maintained = opts.idle_ttl_ms.is_some() || opts.has_retention();
        let interned = self.intern_options(opts);
        self.live_slot_mut(id)?.opts = interned;
        self.maintained.set(id.slot(), maintained);
        Ok(())
    }

    /// Bytes a stream holds from the batch holding `from` on, counting at
    /// most `cap` (cheap readiness checks for long polls).
    pub fn stream_bytes_from(&self, id: QueueId, from: u64, cap: u64) -> u64 {
        self.live_slot(id).and_then(|s| s.hot.as_ref()).map(|h| h.stream.bytes_from(from, cap)).unwrap_or(0)
    }

    pub fn options(&self, id: QueueId) -> Option<&QueueOptions> {
        self.live_slot(id).map(|s| &self.options[s.opts as usize])
    }
    pub fn exists(&self, id: QueueId) -> bool {
        self.live_slot(id).is_some()
    }

    pub fn touch(&mut self, id: QueueId, now_ms: u64) {
        if let Ok(s) = self.live_slot_mut(id) {
            s.last_active_s = (now_ms / 1000) as u32;
        }
    }

    /// Assigns the next `span` offsets of `id`, returning the first.
    pub fn reserve_offsets(&mut self, id: QueueId, span: u32) -> Result<u64, StoreError> {
        let s = self.live_slot_mut(id)?;
        let first = s.next_offset;
        s.next_offset += span.max(1) as u64;
        Ok(first)
    }

    fn hot_mut(&mut self, id: QueueId) -> Result<(&mut Hot, &QueueOptions), StoreError> {
        let slot = self
            .chunks
            .get_mut(id.slot() as usize / CHUNK)
            .map(|c| &mut c[id.slot() as usize % CHUNK])
            .filter(|s| s.name.is_some() && s.generation == id.generation())
            .ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?;
        let opts = &self.options[slot.opts as usize];
        if slot.hot.is_none() {
            self.hot.set(id.slot(), true);
        }
        Ok((slot.hot.get_or_insert_with(Default::default), opts))
    }

    /// Frees the hot part of a queue that drained, so idle queues stay small.
    fn cool(&mut self, id: QueueId) {
        let mut cooled = false;
        if let Ok(s) = self.live_slot_mut(id) {
            if s.hot.as_ref().is_some_and(|h| h.is_idle()) {
                s.hot = None;
                cooled = true;
            }
        }
        if cooled {
            self.hot.set(id.slot(), false);
        }
    }

    /// Makes a stored record visible in a queue at `offset` (called in log
    /// order, after the record is written).
    pub fn index(&mut self, id: QueueId, e: IndexEntry<'_>, now_ms: u64) -> Result<(), StoreError> {
        let end = e.offset + e.span.max(1) as u64;
        {
            let s = self.live_slot_mut(id)?;
            // Replay has no reservation step: the record's offsets are the truth.
            s.next_offset = s.next_offset.max(end);
        }
        let (hot, opts) = self.hot_mut(id)?;
        match opts.kind {
            QueueKind::Queue => hot.pop.insert(&e, opts, now_ms),
            QueueKind::Stream => hot.stream.push(&e),
        }
        self.live.push((e.pos, e.total as i64));
        Ok(())
    }

    /// The next ready messages of a queue in pop order (offset, position,
    /// bytes), changing nothing. Empty for a stream or an idle queue.
    pub fn peek(&self, id: QueueId, max: usize) -> Result<Vec<(u64, u64, u32)>, StoreError> {
        let s = self.live_slot(id).ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?;
        Ok(s.hot.as_ref().map(|h| h.pop.peek(max)).unwrap_or_default())
    }

    pub fn pop(&mut self, id: QueueId, max: usize, invisible_ms: u64, now_ms: u64) -> Result<PopOutcome, StoreError> {
        let (hot, opts) = self.hot_mut(id)?;
        if opts.kind != QueueKind::Queue {
            return Err(StoreError::InvalidArgument("a stream is read by offset, not popped".into()));
        }
        let out = hot.pop.pop(id, opts, max, invisible_ms, now_ms);
        for d in &out.dead {
            self.live.push((d.pos, -(d.total as i64)));
        }
        self.touch(id, now_ms);
        self.cool(id);
        Ok(out)
    }

    /// Removes an in-flight message for good. Returns its log position.
    pub fn ack(&mut self, r: Receipt, now_ms: u64) -> Result<u64, StoreError> {
        let (hot, opts) = self.hot_mut(r.queue)?;
        let (pos, total) = hot.pop.ack(&r, opts, now_ms)?;
        self.live.push((pos, -(total as i64)));
        self.touch(r.queue, now_ms);
        self.cool(r.queue);
        Ok(pos)
    }

    pub fn nack(&mut self, r: Receipt, action: NackAction, now_ms: u64) -> Result<NackOutcome, StoreError> {
        let (hot, opts) = self.hot_mut(r.queue)?;
        let out = hot.pop.nack(r, opts, action, now_ms)?;
        match &out {
            NackOutcome::DeadLettered(d) => self.live.push((d.pos, -(d.total as i64))),
            NackOutcome::Dropped { pos, total } => self.live.push((*pos, -(*total as i64))),
            NackOutcome::Requeued { .. } => {}
        }
        self.touch(r.queue, now_ms);
        self.cool(r.queue);
        Ok(out)
    }

    pub fn change_invisible(&mut self, r: Receipt, invisible_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let (hot, _) = self.hot_mut(r.queue)?;
        hot.pop.change_invisible(&r, invisible_ms, now_ms)
    }

    /// Replay: an ack record. Unknown offsets are ignored (already gone).
    pub fn restore_ack(&mut self, id: QueueId, offset: u64, now_ms: u64) {
        if let Ok((hot, opts)) = self.hot_mut(id) {
            if let Some((pos, total)) = hot.pop.remove(offset, opts, now_ms) {
                self.live.push((pos, -(total as i64)));
            }
            self.cool(id);
        }
    }

    /// Replay: a requeue record (delivery count and next visibility).
    pub fn restore_requeue(&mut self, id: QueueId, offset: u64, deliveries: u32, visible_at_ms: u64, now_ms: u64) {
        if let Ok((hot, _)) = self.hot_mut(id) {
            hot.pop.restore_requeue(offset, deliveries, visible_at_ms, now_ms);
        }
    }

    pub fn read_stream(&self, id: QueueId, from: u64, max_batches: usize, max_bytes: u64) -> Result<StreamRead, StoreError> {
        let s = self.live_slot(id).ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?;
        if self.options[s.opts as usize].kind != QueueKind::Stream {
            return Err(StoreError::InvalidArgument("a queue is consumed by pop, not read by offset".into()));
        }
        Ok(match &s.hot {
            Some(h) => h.stream.read(from, max_batches, max_bytes, s.next_offset),
            None => StreamRead { batches: Vec::new(), start_offset: s.next_offset, next_offset: s.next_offset },
        })
    }

    /// First offset whose batch timestamp is at or after `ts_ms`; the end offset if none.
    pub fn offset_for_timestamp(&self, id: QueueId, ts_ms: u64) -> Result<u64, StoreError> {
        let s = self.live_slot(id).ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?;
        Ok(s.hot.as_ref().and_then(|h| h.stream.offset_for_timestamp(ts_ms)).unwrap_or(s.next_offset))
    }

    /// Chunks of slots: maintenance and metrics walk the table one chunk per
    /// lock hold, so no single hold grows with the number of queues.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Chunks holding a queue that maintenance must look at.
    pub fn maintained_chunks(&self) -> Vec<usize> {
        (0..self.chunks.len()).filter(|&c| self.maintained.any_in_chunk(c)).collect()
    }

    /// Chunks holding a queue that holds messages.
    pub fn hot_chunks(&self) -> Vec<usize> {
        (0..self.chunks.len()).filter(|&c| self.hot.any_in_chunk(c)).collect()
    }

    /// Applies stream retention; returns how many batches were dropped.
    pub fn apply_retention(&mut self, now_ms: u64) -> usize {
        (0..self.chunks.len()).map(|c| self.apply_retention_chunk(c, now_ms)).sum()
    }

    pub fn apply_retention_chunk(&mut self, c: usize, now_ms: u64) -> usize {
        let mut dropped = 0;
        if !self.maintained.any_in_chunk(c) {
            return 0;
        }
        let slots: Vec<usize> = self.maintained.in_chunk(c).collect();
        let Some(chunk) = self.chunks.get_mut(c) else { return 0 };
        for i in slots {
            let Some(s) = chunk.get_mut(i) else { continue };
            let (Some(_), Some(hot)) = (&s.name, s.hot.as_mut()) else { continue };
            let opts = &self.options[s.opts as usize];
            if !opts.has_retention() {
                continue;
            }
            for (pos, total) in hot.stream.apply_retention(opts, now_ms) {
                self.live.push((pos, -(total as i64)));
                dropped += 1;
            }
        }
        dropped
    }

    /// Queues of chunk `c` idle longer than their TTL, with nothing in flight.
    pub fn idle_expired_chunk(&self, c: usize, now_ms: u64) -> Vec<QueueId> {
        let now_s = now_ms / 1000;
        let mut out = Vec::new();
        let Some(chunk) = self.chunks.get(c) else { return out };
        for i in self.maintained.in_chunk(c) {
            let Some(s) = chunk.get(i).filter(|s| s.name.is_some()) else { continue };
            let Some(ttl) = self.options[s.opts as usize].idle_ttl_ms else { continue };
            let busy = s.hot.as_ref().is_some_and(|h| h.pop.inflight() > 0);
            if !busy && (s.last_active_s as u64) * 1000 + ttl <= now_s * 1000 {
                out.push(QueueId::new((c * CHUNK + i) as u32, s.generation));
            }
        }
        out
    }

    pub fn info(&self, id: QueueId) -> Option<QueueInfo> {
        let s = self.live_slot(id)?;
        let opts = self.options[s.opts as usize].clone();
        let (start, ready, inflight, delayed, bytes) = match &s.hot {
            Some(h) => match opts.kind {
                QueueKind::Queue => {
                    let (r, i, d) = h.pop.counts();
                    (h.pop.lowest_offset().unwrap_or(s.next_offset), r, i, d, h.pop.bytes())
                }
                QueueKind::Stream => (h.stream.start_offset(s.next_offset), 0, 0, 0, h.stream.bytes()),
            },
            None => (s.next_offset, 0, 0, 0, 0),
        };
        Some(QueueInfo {
            id,
            name: s.name.as_deref().unwrap_or("").to_owned(),
            options: opts,
            next_offset: s.next_offset,
            start_offset: start,
            ready,
            inflight,
            delayed,
            stored_bytes: bytes,
        })
    }

    /// All queue names (admin listing; O(queues)).
    pub fn names(&self) -> Vec<(QueueId, String)> {
        let mut out = Vec::with_capacity(self.count);
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (i, s) in chunk.iter().enumerate() {
                if let Some(n) = &s.name {
                    out.push((QueueId::new((c * CHUNK + i) as u32, s.generation), n.to_string()));
                }
            }
        }
        out
    }

    /// Totals for metrics over chunk `c`: (ready, inflight).
    pub fn totals_chunk(&self, c: usize) -> (u64, u64) {
        let mut ready = 0;
        let mut inflight = 0;
        let chunk = self.chunks.get(c).map(|c| &c[..]).unwrap_or(&[]);
        for s in self.hot.in_chunk(c).filter_map(|i| chunk.get(i)) {
            if let Some(h) = &s.hot {
                let (r, i, d) = h.pop.counts();
                ready += r + d;
                inflight += i;
            }
        }
        (ready, inflight)
    }

    /// Earliest time a timer (visibility, delay) falls due in `id`.
    pub fn next_due(&self, id: QueueId) -> Option<u64> {
        self.live_slot(id).and_then(|s| s.hot.as_ref()).and_then(|h| h.pop.next_due())
    }

    /// Takes the pending live-byte deltas; hand the vector back with
    /// [`QueueTable::return_live_buffer`] so its capacity is reused.
    pub fn take_live(&mut self) -> Vec<LiveDelta> {
        std::mem::take(&mut self.live)
    }

    /// Gives back the vector [`QueueTable::take_live`] returned, emptied.
    pub fn return_live_buffer(&mut self, mut buf: Vec<LiveDelta>) {
        if self.live.is_empty() {
            buf.clear();
            self.live = buf;
        }
    }
}

/// What indexing needs to know about a stored record.
pub struct IndexEntry<'a> {
    pub offset: u64,
    pub span: u32,
    pub pos: u64,
    pub total: u32,
    pub timestamp_ms: u64,
    pub deliver_at_ms: u64,
    pub priority: u8,
    pub group: Option<&'a [u8]>,
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > QUEUE_NAME_BYTES_MAX {
        return Err(StoreError::InvalidQueueName(format!("queue names are 1..={QUEUE_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_queue_slot_stays_small() {
        // The 10-million-queue budget is < 100 B per idle queue: 48 B of slot,
        // the name's heap block and ~5 B of hash table.
        assert!(std::mem::size_of::<Slot>() <= 48, "slot is {} bytes", std::mem::size_of::<Slot>());
    }

    #[test]
    fn ids_of_deleted_queues_never_reach_the_slot_successor() {
        let mut t = QueueTable::new(10);
        let (a, _) = t.declare("a", &QueueOptions::default(), 0).expect("a");
        assert!(t.delete(a));
        let (b, _) = t.declare("b", &QueueOptions::default(), 0).expect("b");
        assert_eq!(a.slot(), b.slot(), "the slot is reused");
        assert_ne!(a, b);
        assert!(t.name(a).is_none());
        assert!(t.reserve_offsets(a, 1).is_err());
        assert_eq!(t.name(b), Some("b"));
    }

    #[test]
    fn transient_ids_never_equal_durable_ids() {
        let mut t = QueueTable::new(10);
        let (tr, _) = t.declare("t", &QueueOptions::transient(), 0).expect("t");
        assert!(tr.is_transient());
        assert!(t.delete(tr));
        let (d, _) = t.declare("d", &QueueOptions::default(), 0).expect("d");
        assert_eq!(d.slot(), tr.slot());
        assert!(!d.is_transient());
        assert_ne!(d, tr);
        assert!(t.snapshot_queues().iter().all(|q| !q.id.is_transient()));
    }

    #[test]
    fn slot_bits_find_exactly_the_set_slots_per_chunk() {
        let mut b = SlotBits::default();
        for slot in [0u32, 63, 64, 4095, 4096, 9000] {
            b.set(slot, true);
        }
        b.set(64, false);
        b.set(1_000_000, false);
        assert_eq!(b.in_chunk(0).collect::<Vec<_>>(), [0, 63, 4095]);
        assert_eq!(b.in_chunk(1).collect::<Vec<_>>(), [0]);
        assert_eq!(b.in_chunk(2).collect::<Vec<_>>(), [9000 - 8192]);
        assert!(b.any_in_chunk(2) && !b.any_in_chunk(3));
    }

    #[test]
    fn the_queue_limit_is_enforced() {
        let mut t = QueueTable::new(2);
        t.declare("a", &QueueOptions::default(), 0).expect("a");
        t.declare("b", &QueueOptions::default(), 0).expect("b");
        assert!(matches!(t.declare("c", &QueueOptions::default(), 0), Err(StoreError::QueueLimit(2))));
        assert!(t.declare("a", &QueueOptions::default(), 0).is_ok(), "redeclaring an existing queue is not a new one");
    }

    #[test]
    fn a_drained_queue_drops_its_heap_part() {
        let mut t = QueueTable::new(10);
        let (q, _) = t.declare("q", &QueueOptions::default(), 0).expect("q");
        let e = IndexEntry { offset: 0, span: 1, pos: 100, total: 50, timestamp_ms: 0, deliver_at_ms: 0, priority: 0, group: None };
        t.index(q, e, 0).expect("index");
        let out = t.pop(q, 1, 1000, 0).expect("pop");
        t.ack(out.items[0].receipt, 0).expect("ack");
        assert!(t.live_slot(q).expect("slot").hot.is_none());
    }

    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Index { group: Option<u8>, priority: u8, delay: u16 },
        Pop { max: u8, invisible: u16 },
        Ack(u8),
        Nack(u8, u16),
        DeadLetter(u8),
        Extend(u8, u16),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (proptest::option::of(0u8..3), 0u8..4, prop_oneof![Just(0u16), 1u16..2000]).prop_map(|(group, priority, delay)| Op::Index { group, priority, delay }),
            3 => (1u8..5, 1u16..3000).prop_map(|(max, invisible)| Op::Pop { max, invisible }),
            2 => any::<u8>().prop_map(Op::Ack),
            1 => (any::<u8>(), 0u16..1500).prop_map(|(i, d)| Op::Nack(i, d)),
            1 => any::<u8>().prop_map(Op::DeadLetter),
            1 => (any::<u8>(), 1u16..3000).prop_map(|(i, d)| Op::Extend(i, d)),
            2 => (0u16..2500).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// Whatever consumers do, in any order and at any time: no message is
        /// in flight twice, an acked or dead-lettered one never comes back,
        /// none is lost, FIFO groups never have two in flight, and the
        /// counters agree with the contents.
        #[test]
        fn pop_state_machine_invariants(fifo in any::<bool>(), max_deliveries in proptest::option::of(1u32..4), ops in proptest::collection::vec(op(), 1..120)) {
            let opts = QueueOptions { fifo, max_priority: 3, max_deliveries, dead_letter: Some("dlq".into()), ..QueueOptions::default() };
            let mut t = QueueTable::new(10);
            let (q, _) = t.declare("q", &opts, 0).expect("q");
            let mut now = 1_000u64;
            let mut next = 0u64;
            let mut groups: BTreeMap<u64, Option<u8>> = BTreeMap::new();
            let mut gone: BTreeSet<u64> = BTreeSet::new();
            // Deliveries we hold: offset -> receipt, and when it expires.
            let mut held: BTreeMap<u64, (Receipt, u64)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Index { group, priority, delay } => {
                        let key = group.map(|g| [g]);
                        let e = IndexEntry { offset: next, span: 1, pos: 1000 + next, total: 10, timestamp_ms: now, deliver_at_ms: if delay == 0 { 0 } else { now + delay as u64 }, priority, group: key.as_ref().map(|k| &k[..]) };
                        t.index(q, e, now).expect("index");
                        groups.insert(next, group);
                        next += 1;
                    }
                    Op::Pop { max, invisible } => {
                        let out = t.pop(q, max as usize, invisible as u64, now).expect("pop");
                        for d in &out.dead {
                            prop_assert!(gone.insert(d.offset), "dead-lettered twice: {}", d.offset);
                            held.remove(&d.offset);
                        }
                        for it in &out.items {
                            prop_assert!(!gone.contains(&it.offset), "a finished message came back: {}", it.offset);
                            if let Some((_, until)) = held.get(&it.offset) {
                                prop_assert!(*until <= now, "delivered while still in flight: {}", it.offset);
                            }
                            held.insert(it.offset, (it.receipt, now + invisible as u64));
                        }
                    }
                    Op::Ack(i) | Op::Nack(i, _) | Op::DeadLetter(i) | Op::Extend(i, _) => {
                        let Some((&off, &(r, until))) = held.iter().nth(i as usize % held.len().max(1)) else { continue };
                        let live = until > now;
                        let res = match op {
                            Op::Ack(_) => t.ack(r, now).map(|_| true),
                            Op::Nack(_, d) => t.nack(r, NackAction::Requeue { delay_ms: d as u64 }, now).map(|o| !matches!(o, NackOutcome::Requeued { .. })),
                            Op::DeadLetter(_) => t.nack(r, NackAction::DeadLetter, now).map(|_| true),
                            Op::Extend(_, d) => t.change_invisible(r, d as u64, now).map(|u| { held.insert(off, (r, u)); false }),
                            _ => unreachable!(),
                        };
                        match res {
                            Ok(finished) => {
                                prop_assert!(live, "a receipt past its invisibility still worked (offset {off})");
                                if finished {
                                    prop_assert!(gone.insert(off), "finished twice: {off}");
                                }
                                if !matches!(op, Op::Extend(..)) {
                                    held.remove(&off);
                                }
                            }
                            Err(_) => {
                                // Only an expired receipt may fail (it was possibly redelivered).
                                prop_assert!(!live, "a live receipt was refused (offset {off})");
                                held.remove(&off);
                            }
                        }
                    }
                    Op::Advance(ms) => now += ms as u64,
                }
                // Counters agree with contents, and nothing is lost.
                let info = t.info(q).expect("info");
                let present = info.ready + info.inflight + info.delayed;
                prop_assert_eq!(present + gone.len() as u64, next, "lost or duplicated messages");
                let in_flight_now = held.values().filter(|(_, u)| *u > now).count() as u64;
                prop_assert!(info.inflight >= in_flight_now);
                if fifo {
                    let mut busy = BTreeSet::new();
                    for (off, (_, until)) in &held {
                        if *until > now {
                            if let Some(Some(g)) = groups.get(off) {
                                prop_assert!(busy.insert(*g), "two messages of group {g} in flight");
                            }
                        }
                    }
                }
            }
        }
    }
}
