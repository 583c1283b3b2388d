//! Consumption by message: ready / in flight / delayed, with priorities,
//! FIFO message groups, a rate limit and dead-lettering.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use super::{IndexEntry, QueueId, QueueOptions};
use crate::limits::{INVISIBLE_MS_MAX, PRIORITY_LEVELS_MAX};
use crate::StoreError;

/// Proof of one delivery. Stale after the message is redelivered (its
/// `attempt` no longer matches), acked or moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub queue: QueueId,
    pub offset: u64,
    pub attempt: u32,
}

impl Receipt {
    /// A printable, parseable handle (for protocols that pass strings).
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}-{:x}", self.queue.0, self.offset, self.attempt)
    }
    pub fn decode(s: &str) -> Option<Receipt> {
        let mut it = s.split('-');
        let q = u64::from_str_radix(it.next()?, 16).ok()?;
        let o = u64::from_str_radix(it.next()?, 16).ok()?;
        let a = u32::from_str_radix(it.next()?, 16).ok()?;
        it.next().is_none().then_some(Receipt { queue: QueueId(q), offset: o, attempt: a })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopItem {
    pub offset: u64,
    pub pos: u64,
    pub total: u32,
    /// Deliveries including this one (1 on first delivery).
    pub deliveries: u32,
    pub receipt: Receipt,
}

/// A message that used up its deliveries (or was rejected without requeue)
/// and leaves the queue; the store indexes it into `to` if that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub from: QueueId,
    pub offset: u64,
    pub pos: u64,
    pub total: u32,
    pub deliveries: u32,
    pub to: Option<String>,
}

#[derive(Debug, Default)]
pub struct PopOutcome {
    pub items: Vec<PopItem>,
    pub dead: Vec<DeadLetter>,
    /// When something may next become deliverable (a timer or a rate-limit token).
    pub next_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Visible again after `delay_ms` (0: at once), keeping its place in order.
    Requeue { delay_ms: u64 },
    /// To the dead-letter queue, or dropped if there is none.
    DeadLetter,
    /// Gone, like an ack.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackOutcome {
    Requeued { deliveries: u32, visible_at_ms: u64 },
    DeadLettered(DeadLetter),
    Dropped { pos: u64, total: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Inflight {
        until: u64,
    },
    Delayed {
        until: u64,
    },
    /// FIFO: waiting behind an earlier message of its group.
    Blocked,
}

#[derive(Debug)]
struct Entry {
    pos: u64,
    total: u32,
    priority: u8,
    deliveries: u32,
    deliver_at: u64,
    state: State,
    group: Option<Bytes>,
}

#[derive(Debug, Default)]
pub(super) struct PopState {
    entries: BTreeMap<u64, Entry>,
    /// (inverted priority, offset): visible and deliverable, best first.
    ready: BTreeSet<(u8, u64)>,
    /// (due time, offset): in flight until, or delayed until.
    timers: BTreeSet<(u64, u64)>,
    /// FIFO: unfinished offsets of each group, head first.
    groups: HashMap<Bytes, VecDeque<u64>>,
    inflight: u64,
    delayed: u64,
    bytes: u64,
    tokens: f64,
    tokens_at_ms: u64,
}

fn rank(priority: u8, opts: &QueueOptions) -> u8 {
    let cap = opts.max_priority.min(PRIORITY_LEVELS_MAX);
    u8::MAX - priority.min(cap)
}

impl PopState {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn inflight(&self) -> u64 {
        self.inflight
    }
    pub fn counts(&self) -> (u64, u64, u64) {
        let total = self.entries.len() as u64;
        (total - self.inflight - self.delayed, self.inflight, self.delayed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn lowest_offset(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }
    /// (position, bytes) of every entry: what this queue keeps alive in the log.
    pub fn positions(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.entries.values().map(|e| (e.pos, e.total))
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.entries.contains_key(&offset)
    }

    pub fn pos_of(&self, offset: u64) -> Option<u64> {
        self.entries.get(&offset).map(|e| e.pos)
    }

    /// Entries stored in `[from, to)` of the log: (offset, position, bytes).
    pub fn entries_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.entries.iter().filter(move |(_, e)| e.pos >= from && e.pos < to).map(|(o, e)| (*o, e.pos, e.total))
    }

    /// The message at `offset` was copied to `new_pos`: point the entry there
    /// if it is still the copy's original. Returns the old (position, bytes).
    pub fn relocate(&mut self, offset: u64, old_pos: Option<u64>, new_pos: u64, new_total: u32) -> Option<(u64, u32)> {
        let e = self.entries.get_mut(&offset).filter(|e| old_pos.is_none_or(|p| e.pos == p))?;
        let old = (e.pos, e.total);
        self.bytes = self.bytes - e.total as u64 + new_total as u64;
        e.pos = new_pos;
        e.total = new_total;
        Some(old)
    }

    /// After replay: derive ready / delayed / blocked and the FIFO group
    /// queues again from the entries in offset order (relocated copies can
    /// arrive out of order, and nothing is in flight after a restart).
    pub fn rebuild(&mut self, opts: &QueueOptions, now_ms: u64) {
        self.ready.clear();
        self.timers.clear();
        self.groups.clear();
        self.inflight = 0;
        self.delayed = 0;
        let offsets: Vec<u64> = self.entries.keys().copied().collect();
        for offset in offsets {
            let Some(e) = self.entries.get(&offset) else { continue };
            let (priority, group) = (e.priority, e.group.clone());
            let at = match e.state {
                State::Delayed { until } => until.max(e.deliver_at),
                _ => e.deliver_at,
            };
            let blocked = match group {
                Some(g) => {
                    let q = self.groups.entry(g).or_default();
                    q.push_back(offset);
                    q.len() > 1
                }
                None => false,
            };
            let st = if blocked { State::Blocked } else { self.arrive(offset, priority, at, opts, now_ms) };
            if let Some(e) = self.entries.get_mut(&offset) {
                e.state = st;
            }
        }
    }
    pub fn next_due(&self) -> Option<u64> {
        self.timers.iter().next().map(|t| t.0)
    }

    pub fn insert(&mut self, e: &IndexEntry<'_>, opts: &QueueOptions, now_ms: u64) {
        let group = if opts.fifo { e.group.map(Bytes::copy_from_slice) } else { None };
        let mut entry = Entry {
            pos: e.pos,
            total: e.total,
            priority: e.priority,
            deliveries: 0,
            deliver_at: e.deliver_at_ms,
            state: State::Blocked,
            group: group.clone(),
        };
        self.bytes += e.total as u64;
        let blocked = match &group {
            Some(g) => {
                let q = self.groups.entry(g.clone()).or_default();
                q.push_back(e.offset);
                q.len() > 1
            }
            None => false,
        };
        if !blocked {
            entry.state = self.arrive(e.offset, entry.priority, entry.deliver_at, opts, now_ms);
        }
        self.entries.insert(e.offset, entry);
    }

    /// Where a message that may be delivered goes: ready now, or delayed.
    fn arrive(&mut self, offset: u64, priority: u8, deliver_at: u64, opts: &QueueOptions, now_ms: u64) -> State {
        if deliver_at > now_ms {
            self.timers.insert((deliver_at, offset));
            self.delayed += 1;
            State::Delayed { until: deliver_at }
        } else {
            self.ready.insert((rank(priority, opts), offset));
            State::Ready
        }
    }

    /// Moves due timers: delayed messages become ready; expired in-flight
    /// messages are redelivered, or dead-lettered once out of deliveries.
    fn promote(&mut self, id: QueueId, opts: &QueueOptions, now_ms: u64, dead: &mut Vec<DeadLetter>) {
        while let Some(&(at, offset)) = self.timers.iter().next() {
            if at > now_ms {
                break;
            }
            self.timers.remove(&(at, offset));
            let Some(e) = self.entries.get_mut(&offset) else { continue };
            match e.state {
                State::Inflight { until } if until == at => {
                    self.inflight -= 1;
                    if opts.max_deliveries.is_some_and(|m| e.deliveries >= m) {
                        e.state = State::Blocked;
                        if let Some(d) = self.take_dead(id, offset, opts, now_ms) {
                            dead.push(d);
                        }
                    } else {
                        e.state = State::Ready;
                        self.ready.insert((rank(e.priority, opts), offset));
                    }
                }
                State::Delayed { until } if until == at => {
                    self.delayed -= 1;
                    e.state = State::Ready;
                    self.ready.insert((rank(e.priority, opts), offset));
                }
                _ => {}
            }
        }
    }

    fn refill(&mut self, opts: &QueueOptions, now_ms: u64) -> Option<f64> {
        let rate = opts.rate_per_sec? as f64;
        if self.tokens_at_ms == 0 {
            self.tokens = rate;
        } else {
            let dt = now_ms.saturating_sub(self.tokens_at_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        }
        self.tokens_at_ms = now_ms;
        Some(rate)
    }

    /// The next `max` ready messages in pop order, as (offset, position,
    /// bytes), without changing anything (no delivery is counted).
    pub fn peek(&self, max: usize) -> Vec<(u64, u64, u32)> {
        self.ready.iter().take(max).filter_map(|(_, o)| self.entries.get(o).map(|e| (*o, e.pos, e.total))).collect()
    }

    pub fn pop(&mut self, id: QueueId, opts: &QueueOptions, max: usize, invisible_ms: u64, now_ms: u64) -> PopOutcome {
        let mut out = PopOutcome::default();
        self.promote(id, opts, now_ms, &mut out.dead);
        let mut max = max.min(crate::limits::POP_BATCH_MAX);
        let rate = self.refill(opts, now_ms);
        if rate.is_some() {
            max = max.min(self.tokens.floor() as usize);
        }
        let invisible_ms = invisible_ms.clamp(1, INVISIBLE_MS_MAX);
        let until = now_ms + invisible_ms;
        while out.items.len() < max {
            let Some(&(r, offset)) = self.ready.iter().next() else { break };
            self.ready.remove(&(r, offset));
            let Some(e) = self.entries.get_mut(&offset) else { continue };
            e.deliveries += 1;
            e.state = State::Inflight { until };
            self.timers.insert((until, offset));
            self.inflight += 1;
            out.items.push(PopItem {
                offset,
                pos: e.pos,
                total: e.total,
                deliveries: e.deliveries,
                receipt: Receipt { queue: id, offset, attempt: e.deliveries },
            });
        }
        if let Some(rate) = rate {
            self.tokens -= out.items.len() as f64;
            if self.tokens < 1.0 && !self.ready.is_empty() {
                let wait = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
                out.next_at_ms = Some(now_ms + wait.max(1));
            }
        }
        if out.items.is_empty() {
            out.next_at_ms = match (out.next_at_ms, self.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }

    /// A receipt is good while its delivery is in flight: same attempt, and
    /// its invisibility has not run out (expiry is applied lazily, so without
    /// the time check an ack's fate would depend on whether someone popped).
    fn check<'a>(entries: &'a mut BTreeMap<u64, Entry>, r: &Receipt, now_ms: u64) -> Result<&'a mut Entry, StoreError> {
        match entries.get_mut(&r.offset) {
            Some(e) if e.deliveries == r.attempt && matches!(e.state, State::Inflight { until } if until > now_ms) => Ok(e),
            _ => Err(StoreError::InvalidReceipt),
        }
    }

    /// Leaves flight: clears the timer and the in-flight count.
    fn land(&mut self, offset: u64) {
        if let Some(e) = self.entries.get_mut(&offset) {
            if let State::Inflight { until } = e.state {
                self.timers.remove(&(until, offset));
                self.inflight -= 1;
                e.state = State::Blocked;
            }
        }
    }

    pub fn ack(&mut self, r: &Receipt, opts: &QueueOptions, now_ms: u64) -> Result<(u64, u32), StoreError> {
        Self::check(&mut self.entries, r, now_ms)?;
        self.land(r.offset);
        self.remove(r.offset, opts, now_ms).ok_or(StoreError::InvalidReceipt)
    }

    /// Removes an entry in any state; releases the next message of its group.
    /// Returns its (position, bytes).
    pub fn remove(&mut self, offset: u64, opts: &QueueOptions, now_ms: u64) -> Option<(u64, u32)> {
        let e = self.entries.remove(&offset)?;
        self.bytes -= e.total as u64;
        match e.state {
            State::Ready => {
                self.ready.remove(&(rank(e.priority, opts), offset));
            }
            State::Inflight { until } => {
                self.timers.remove(&(until, offset));
                self.inflight -= 1;
            }
            State::Delayed { until } => {
                self.timers.remove(&(until, offset));
                self.delayed -= 1;
            }
            State::Blocked => {}
        }
        if let Some(g) = e.group {
            let mut next = None;
            if let Some(q) = self.groups.get_mut(&g) {
                let was_head = q.front() == Some(&offset);
                q.retain(|&o| o != offset);
                if was_head {
                    next = q.front().copied();
                }
                if q.is_empty() {
                    self.groups.remove(&g);
                }
            }
            if let Some(n) = next {
                if let Some(ne) = self.entries.get(&n) {
                    if ne.state == State::Blocked {
                        let (p, at) = (ne.priority, ne.deliver_at);
                        let st = self.arrive(n, p, at, opts, now_ms);
                        if let Some(ne) = self.entries.get_mut(&n) {
                            ne.state = st;
                        }
                    }
                }
            }
        }
        Some((e.pos, e.total))
    }

    fn take_dead(&mut self, id: QueueId, offset: u64, opts: &QueueOptions, now_ms: u64) -> Option<DeadLetter> {
        let deliveries = self.entries.get(&offset).map(|e| e.deliveries)?;
        let (pos, total) = self.remove(offset, opts, now_ms)?;
        Some(DeadLetter { from: id, offset, pos, total, deliveries, to: opts.dead_letter.clone() })
    }

    pub fn nack(&mut self, r: Receipt, opts: &QueueOptions, action: NackAction, now_ms: u64) -> Result<NackOutcome, StoreError> {
        Self::check(&mut self.entries, &r, now_ms)?;
        self.land(r.offset);
        let deliveries = self.entries.get(&r.offset).map(|e| e.deliveries).unwrap_or(0);
        match action {
            NackAction::Requeue { delay_ms } => {
                if opts.max_deliveries.is_some_and(|m| deliveries >= m) {
                    return self
                        .take_dead(r.queue, r.offset, opts, now_ms)
                        .map(NackOutcome::DeadLettered)
                        .ok_or(StoreError::InvalidReceipt);
                }
                let visible_at_ms = now_ms + delay_ms.min(crate::limits::DELAY_MS_MAX);
                let prio = self.entries.get(&r.offset).map(|e| e.priority).unwrap_or(0);
                let st = self.arrive(r.offset, prio, visible_at_ms, opts, now_ms);
                if let Some(e) = self.entries.get_mut(&r.offset) {
                    e.state = st;
                }
                Ok(NackOutcome::Requeued { deliveries, visible_at_ms })
            }
            NackAction::DeadLetter => {
                self.take_dead(r.queue, r.offset, opts, now_ms).map(NackOutcome::DeadLettered).ok_or(StoreError::InvalidReceipt)
            }
            NackAction::Drop => self
                .remove(r.offset, opts, now_ms)
                .map(|(pos, total)| NackOutcome::Dropped { pos, total })
                .ok_or(StoreError::InvalidReceipt),
        }
    }

    pub fn change_invisible(&mut self, r: &Receipt, invisible_ms: u64, now_ms: u64) -> Result<u64, StoreError> {
        let e = Self::check(&mut self.entries, r, now_ms)?;
        let State::Inflight { until } = e.state else { return Err(StoreError::InvalidReceipt) };
        let new_until = now_ms + invisible_ms.clamp(1, INVISIBLE_MS_MAX);
        e.state = State::Inflight { until: new_until };
        self.timers.remove(&(until, r.offset));
        self.timers.insert((new_until, r.offset));
        Ok(new_until)
    }

    /// Replay: restores the delivery count and a pending delay of a requeue.
    pub fn restore_requeue(&mut self, offset: u64, deliveries: u32, visible_at_ms: u64, now_ms: u64) {
        let Some(e) = self.entries.get_mut(&offset) else { return };
        e.deliveries = deliveries;
        if e.state == State::Ready && visible_at_ms > now_ms {
            self.ready.retain(|&(_, o)| o != offset);
            e.state = State::Delayed { until: visible_at_ms };
            self.timers.insert((visible_at_ms, offset));
            self.delayed += 1;
        }
    }
}
