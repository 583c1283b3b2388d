//! The store: the core API every protocol uses. It owns the log and the
//! queue index and keeps them consistent.
//!
//! Ordering rule: queue offsets are assigned and the record is handed to the
//! log writer under one short lock, so the log's order is the offsets' order.
//! New messages become visible only in the writer's commit hook, after their
//! batch is written (and fsynced under `always`). Acks, nacks, declares and
//! deletes change the index at once and are made durable by their record.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::{Clock, SystemClock};
use crate::limits::{self, DISPATCH_COUNT_MAX, RECORD_BYTES_MAX};
use crate::log::writer as writer_msg;
use crate::log::{Committed, FsyncPolicy, Log, LogConfig, RecoveryReport, Submit};
use crate::queue::{
    DeadLetter, IndexEntry, NackAction, NackOutcome, PopItem, QueueId, QueueInfo, QueueKind, QueueOptions, QueueTable, Receipt,
};
use crate::record::{self, Message, MessageHead, Record};
use crate::route::{Pattern, TopicTrie};
use crate::StoreError;

pub use crate::log::frame::KnownCrc;

mod snapshot;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub queue_count_max: usize,
    /// How often retention, idle expiry and segment reclaim run (0: never,
    /// for tests that call [`Store::run_maintenance`] themselves).
    pub maintenance_interval: Duration,
    /// Memory for messages that went only to transient queues; past it such
    /// appends fail with [`StoreError::MemoryLimit`] (protocols push back).
    pub transient_bytes_max: u64,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::default(),
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            queue_count_max: limits::QUEUE_COUNT_MAX_DEFAULT,
            maintenance_interval: Duration::from_secs(1),
            transient_bytes_max: limits::TRANSIENT_BYTES_MAX_DEFAULT,
        }
    }
}

/// A point-in-time copy of the store's counters, for /metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    pub appends_total: u64,
    pub append_bytes_total: u64,
    pub write_batches_total: u64,
    pub fsyncs_total: u64,
    /// Appends refused because the disk was full (nothing else was lost).
    pub appends_refused_no_space_total: u64,
    pub log_bytes: u64,
    pub segments: u64,
    pub queues: u64,
    pub messages_ready: u64,
    pub messages_inflight: u64,
}

/// A message read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    pub pos: u64,
    pub message: Message,
}

/// A message handed out by [`Store::pop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub receipt: Receipt,
    /// Deliveries including this one: 1 the first time (AMQP `redelivered` is `> 1`).
    pub deliveries: u32,
    pub offset: u64,
    pub message: Message,
}

/// Where an append went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub pos: u64,
    pub offsets: Vec<(QueueId, u64)>,
}

/// The result of a read by offset.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub messages: Vec<StoredMessage>,
    /// First retained offset (Kafka log start offset).
    pub start_offset: u64,
    /// Next offset to be written (Kafka high watermark).
    pub next_offset: u64,
}

/// An append on its way to the log; await it for the acknowledgement.
pub struct Ticket {
    rx: oneshot::Receiver<Result<u64, StoreError>>,
    offsets: Vec<(QueueId, u64)>,
}

impl Ticket {
    pub async fn wait(self) -> Result<Appended, StoreError> {
        let pos = self.rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Appended { pos, offsets: self.offsets })
    }
    pub fn offsets(&self) -> &[(QueueId, u64)] {
        &self.offsets
    }
    /// Polls for the acknowledgement without consuming the ticket, so a
    /// protocol can keep many tickets in one ordered queue and poll the
    /// front in its own loop (no boxed future per append). `Ready(Ok(pos))`
    /// once the append is as durable as the fsync policy promises.
    pub fn poll_stored(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<u64, StoreError>> {
        std::future::Future::poll(std::pin::Pin::new(&mut self.rx), cx).map(|r| r.map_err(|_| StoreError::Closed)?)
    }
}

/// What maintenance did in one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub batches_dropped: usize,
    pub queues_expired: usize,
    pub segments_deleted: usize,
    pub bytes_freed: u64,
    /// Live records compaction copied forward out of a mostly dead segment.
    pub records_copied: usize,
}

/// What the writer must do with a record once it is in the log.
pub(crate) enum Op {
    /// Make a new message visible in these queues.
    Message { dispatch: Vec<(QueueId, u64)>, timestamp_ms: u64, deliver_at_ms: u64, priority: u8, span: u32, group: Option<Bytes> },
    /// Index an existing message into a queue (dead-letter).
    Dispatch { id: QueueId, offset: u64, src_pos: u64, src_total: u32, src: Box<IndexMeta> },
    /// A compaction copy of the record at `old_pos`: repoint these entries.
    Relocate { moves: Vec<(QueueId, u64)>, old_pos: u64 },
    /// Already applied to the index; the record only makes it durable.
    Durable,
}

/// The fields of a stored message that indexing needs, read back from the log.
pub(crate) struct IndexMeta {
    timestamp_ms: u64,
    priority: u8,
    group: Option<Bytes>,
}

pub(crate) struct State {
    pub(crate) table: QueueTable,
    /// (group, queue) -> committed offset.
    pub(crate) group_offsets: HashMap<(Arc<str>, QueueId), u64>,
    /// Topic spaces (exchanges, the MQTT topic tree): pattern -> queue.
    pub(crate) spaces: HashMap<Arc<str>, TopicTrie<QueueId>>,
    /// Each queue's bindings, to drop them with the queue.
    pub(crate) bindings_of: HashMap<QueueId, Vec<(Arc<str>, Pattern)>>,
    /// Bytes of live queue entries per segment (keyed by segment base).
    live: BTreeMap<u64, i64>,
    bases: Vec<u64>,
    bases_version: u64,
    /// Bodies of messages that went only to transient queues (never in the
    /// log), keyed by a position with [`MEM_POS`] set.
    mem: hashbrown::HashMap<u64, MemBody>,
    mem_next: u64,
    mem_bytes: u64,
}

/// Positions with this bit name a memory-only body, not a log position.
const MEM_POS: u64 = 1 << 63;

struct MemBody {
    msg: Message,
    size: u64,
    /// Queue entries pointing at it.
    refs: u32,
}

impl State {
    fn mem_ref(&mut self, pos: u64, up: bool) {
        let Some(b) = self.mem.get_mut(&pos) else { return };
        if up {
            b.refs += 1;
        } else {
            b.refs = b.refs.saturating_sub(1);
            if b.refs == 0 {
                let size = b.size;
                self.mem.remove(&pos);
                self.mem_bytes -= size;
            }
        }
    }

    pub(crate) fn bind(&mut self, space: &str, p: &Pattern, id: QueueId) -> bool {
        let space: Arc<str> = match self.spaces.get_key_value(space) {
            Some((k, _)) => k.clone(),
            None => space.into(),
        };
        let added = self.spaces.entry(space.clone()).or_default().insert(p, id);
        if added {
            self.bindings_of.entry(id).or_default().push((space, p.clone()));
        }
        added
    }

    pub(crate) fn unbind(&mut self, space: &str, p: &Pattern, id: QueueId) -> bool {
        let removed = self.spaces.get_mut(space).is_some_and(|t| t.remove(p, &id));
        if removed {
            if let Some(v) = self.bindings_of.get_mut(&id) {
                v.retain(|(s, q)| !(&**s == space && q == p));
                if v.is_empty() {
                    self.bindings_of.remove(&id);
                }
            }
            if self.spaces.get(space).is_some_and(|t| t.is_empty()) {
                self.spaces.remove(space);
            }
        }
        removed
    }

    /// Everything that goes with a queue when it is deleted.
    pub(crate) fn forget_queue(&mut self, id: QueueId) {
        self.group_offsets.retain(|(_, q), _| *q != id);
        for (space, p) in self.bindings_of.remove(&id).unwrap_or_default() {
            if let Some(t) = self.spaces.get_mut(&space) {
                t.remove(&p, &id);
                if t.is_empty() {
                    self.spaces.remove(&space);
                }
            }
        }
    }

    pub(crate) fn route(&self, space: &str, topic: &[&str], dollar_rule: bool) -> Vec<QueueId> {
        let mut out = Vec::new();
        if let Some(t) = self.spaces.get(space) {
            t.matches(topic, dollar_rule, &mut |q| out.push(*q));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn apply_live(&mut self, log: &Log<Op>) {
        // Once per append: the vector goes back to the table, no allocation.
        let deltas = self.table.take_live();
        if deltas.is_empty() {
            self.table.return_live_buffer(deltas);
            return;
        }
        let version = log.segments_version();
        if version != self.bases_version || self.bases.is_empty() {
            self.bases = log.segment_bases();
            self.bases_version = version;
        }
        for &(pos, d) in &deltas {
            if pos & MEM_POS != 0 {
                self.mem_ref(pos, d > 0);
                continue;
            }
            let i = self.bases.partition_point(|&b| b <= pos);
            let base = if i == 0 { 0 } else { self.bases[i - 1] };
            *self.live.entry(base).or_insert(0) += d;
        }
        self.table.return_live_buffer(deltas);
    }
}

/// A registered waiter on one queue; see [`Inner::waiter`].
struct Waiter<'a> {
    inner: &'a Inner,
    id: QueueId,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.inner.waiters.lock() {
            // Ours and the map's: nobody else waits. Clones are made under
            // this lock, so the count cannot change while we look.
            if w.get(&self.id).is_some_and(|n| Arc::strong_count(n) == 2) {
                w.remove(&self.id);
            }
        }
    }
}

pub(crate) struct Inner {
    log: Log<Op>,
    tx: mpsc::Sender<writer_msg::Msg<Op>>,
    state: Mutex<State>,
    waiters: Mutex<HashMap<QueueId, Arc<Notify>>>,
    clock: Arc<dyn Clock>,
    cfg: StoreConfig,
    closed: AtomicBool,
    /// Serializes maintenance runs (the thread and explicit calls).
    maintenance: Mutex<()>,
}

pub struct Store {
    inner: Arc<Inner>,
    /// Set by the server shell's sampler; read by protocol services.
    memory_alarm: Arc<crate::server::memory::MemoryAlarm>,
    maintenance_thread: Mutex<Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>>,
    recovery: RecoveryReport,
    /// The queue table's names version (see [`Store::queue_names_version`]).
    names_version: Arc<AtomicU64>,
    partition_cache: crate::topic::PartitionCache,
}

/// The answer to a record handed to the writer: its position once written.
type Pending = oneshot::Receiver<Result<u64, StoreError>>;

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    m.lock().map_err(|_| StoreError::Poisoned)
}

impl Store {
    /// Opens (recovering if needed) the store in `cfg.data_dir`, creating it if absent.
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>, StoreError> {
        Store::open_with_clock(cfg, Arc::new(SystemClock))
    }

    pub fn open_with_clock(cfg: StoreConfig, clock: Arc<dyn Clock>) -> Result<Arc<Store>, StoreError> {
        if cfg.segment_bytes < limits::SEGMENT_BYTES_MIN {
            return Err(StoreError::InvalidArgument(format!("segment_bytes must be at least {}", limits::SEGMENT_BYTES_MIN)));
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StoreError::io(&cfg.data_dir, e))?;
        let now = clock.now_ms();
        let mut table = QueueTable::new(cfg.queue_count_max);
        let mut group_offsets = HashMap::new();
        let mut bindings = Vec::new();
        let snap = snapshot::load(&cfg.data_dir, &mut table, &mut group_offsets, &mut bindings, now)?;
        let covered = snap.map(|s| s.covers).unwrap_or(0);
        let log_cfg = LogConfig { dir: cfg.data_dir.join("log"), fsync: cfg.fsync, segment_bytes: cfg.segment_bytes };
        let mut st = State {
            table,
            group_offsets,
            spaces: HashMap::new(),
            bindings_of: HashMap::new(),
            live: BTreeMap::new(),
            bases: Vec::new(),
            bases_version: u64::MAX,
            mem: hashbrown::HashMap::new(),
            mem_next: 0,
            mem_bytes: 0,
        };
        for (space, p, id) in bindings {
            st.bind(&space, &p, id);
        }
        let started = std::time::Instant::now();
        let (log, recovery) = Log::open(log_cfg, |pos, total, body| {
            replay(&mut st, pos, total, body, covered, now);
            Ok(())
        })?;
        st.table.finish_replay(now);
        // Retention is not logged: it is a rule (oldest first while over the
        // limit), so applying it again after replay can only move a stream's
        // start forward, never back past what consumers already saw dropped.
        st.table.apply_retention(now);
        drop(st.table.take_live());
        st.bases = log.segment_bases();
        let live = recount_live(&st);
        st.live = live;
        tracing::info!(
            records = recovery.records,
            segments = recovery.segments,
            truncated = recovery.truncated_bytes,
            queues = st.table.len(),
            ms = started.elapsed().as_millis() as u64,
            "store recovered"
        );
        let tx = {
            // The hook needs the Inner that owns the log; it gets a Weak after construction.
            let (hook_tx, hook_rx) = std::sync::mpsc::channel::<Weak<Inner>>();
            let mut weak: Option<Weak<Inner>> = None;
            log.start(Box::new(move |batch: &mut [Committed<Op>]| {
                if weak.is_none() {
                    weak = hook_rx.recv().ok();
                }
                if let Some(inner) = weak.as_ref().and_then(|w| w.upgrade()) {
                    inner.on_commit(batch);
                }
            }))?;
            let tx = log.sender()?;
            let inner = Arc::new(Inner {
                log,
                tx: tx.clone(),
                state: Mutex::new(st),
                waiters: Mutex::new(HashMap::new()),
                clock,
                cfg: cfg.clone(),
                closed: AtomicBool::new(false),
                maintenance: Mutex::new(()),
            });
            let _ = hook_tx.send(Arc::downgrade(&inner));
            (inner, tx)
        };
        let (inner, _tx) = tx;
        let names_version = lock(&inner.state)?.table.names_version();
        let store = Arc::new(Store {
            inner,
            memory_alarm: Arc::default(),
            maintenance_thread: Mutex::new(None),
            recovery,
            names_version,
            partition_cache: crate::topic::PartitionCache::default(),
        });
        if !cfg.maintenance_interval.is_zero() {
            let stop = Arc::new(AtomicBool::new(false));
            let weak = Arc::downgrade(&store.inner);
            let every = cfg.maintenance_interval;
            let stop2 = stop.clone();
            let h = std::thread::Builder::new()
                .name("polymq-maintenance".into())
                .spawn(move || {
                    let mut slept = Duration::ZERO;
                    while !stop2.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                        slept += Duration::from_millis(20);
                        if slept < every {
                            continue;
                        }
                        slept = Duration::ZERO;
                        let Some(inner) = weak.upgrade() else { break };
                        match inner.run_maintenance() {
                            // Compaction and the snapshot before a reclaim
                            // allocate in bursts; hand the freed pages back so
                            // resident memory follows the live data
                            // (RELIABILITY.md, "Soak").
                            Ok(r) if r.segments_deleted > 0 || r.records_copied > 0 => {
                                let t = std::time::Instant::now();
                                crate::sys::release_free_memory();
                                tracing::debug!(micros = t.elapsed().as_micros() as u64, "returned free heap pages to the kernel");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "maintenance failed"),
                        }
                    }
                })
                .map_err(|e| StoreError::io("polymq-maintenance", e))?;
            *lock(&store.maintenance_thread)? = Some((h, stop));
        }
        Ok(store)
    }

    /// What recovery found when this store was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Flushes and fsyncs everything, stops the writer. Idempotent. Blocking:
    /// call it from outside the async runtime or via `spawn_blocking`.
    pub fn close(&self) -> Result<(), StoreError> {
        if let Some((h, stop)) = lock(&self.maintenance_thread)?.take() {
            stop.store(true, Ordering::Release);
            let _ = h.join();
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.log.close()?;
        self.inner.notify_all();
        Ok(())
    }

    pub fn metrics(&self) -> StoreMetrics {
        let c = self.inner.log.counters();
        // One chunk of queues per lock hold: a scrape must not stall appends.
        let (mut ready, mut inflight) = (0, 0);
        let chunks = self.inner.state.lock().map(|st| st.table.hot_chunks()).unwrap_or_default();
        let queues = self.inner.state.lock().map(|st| st.table.len() as u64).unwrap_or(0);
        for c in chunks {
            if let Ok(st) = self.inner.state.lock() {
                let (r, i) = st.table.totals_chunk(c);
                ready += r;
                inflight += i;
            }
        }
        StoreMetrics {
            appends_total: c.appends.load(Ordering::Relaxed),
            append_bytes_total: c.append_bytes.load(Ordering::Relaxed),
            write_batches_total: c.batches.load(Ordering::Relaxed),
            fsyncs_total: c.fsyncs.load(Ordering::Relaxed),
            appends_refused_no_space_total: c.refused_no_space.load(Ordering::Relaxed),
            log_bytes: self.inner.log.disk_bytes(),
            segments: self.inner.log.segment_count() as u64,
            queues,
            messages_ready: ready,
            messages_inflight: inflight,
        }
    }

    /// The memory alarm (see [`crate::server::memory`]): protocol services
    /// `subscribe()` to push back on publishers while it is on.
    pub fn memory_alarm(&self) -> &Arc<crate::server::memory::MemoryAlarm> {
        &self.memory_alarm
    }

    /// Bytes of memory the broker holds on behalf of clients and releases
    /// when they consume: bodies of messages that live only in memory
    /// (transient queues). The memory alarm clears when these drop by its
    /// hysteresis band even if RSS stays high ([`crate::server::memory`]).
    pub fn accounted_memory_bytes(&self) -> u64 {
        self.inner.state.lock().map(|st| st.mem_bytes).unwrap_or(0)
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    // ---- queues ----

    /// Declares a queue (creating it durably) or returns the existing one.
    /// Redeclaring with other options fails with [`StoreError::Inequivalent`].
    pub async fn declare_queue(&self, name: &str, opts: QueueOptions) -> Result<QueueInfo, StoreError> {
        self.inner.declare_queue(name, opts).await
    }

    /// Changes whenever a queue name is added or removed (a declaration that
    /// created a queue, a deletion, an expiry); read without a lock, so a
    /// cache of name lookups can tell whether it is still right.
    pub fn queue_names_version(&self) -> u64 {
        self.names_version.load(Ordering::Acquire)
    }

    pub(crate) fn partition_cache(&self) -> &crate::topic::PartitionCache {
        &self.partition_cache
    }

    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.inner.state.lock().ok()?.table.lookup(name)
    }

    pub fn queue_info(&self, id: QueueId) -> Option<QueueInfo> {
        self.inner.state.lock().ok()?.table.info(id)
    }

    pub fn list_queues(&self) -> Vec<(QueueId, String)> {
        self.inner.state.lock().map(|st| st.table.names()).unwrap_or_default()
    }

    /// Replaces a queue's options (e.g. a stream's retention: Kafka
    /// AlterConfigs), durably: the change is logged as a declare of the same
    /// id, so it survives a restart. The kind and the transient flag cannot
    /// change. Retention applies from the next maintenance run.
    pub async fn alter_queue_options(&self, id: QueueId, opts: QueueOptions) -> Result<QueueInfo, StoreError> {
        let name = {
            let st = lock(&self.inner.state)?;
            st.table.name(id).map(str::to_owned).ok_or_else(|| StoreError::QueueNotFound(format!("id {:#x}", id.0)))?
        };
        let rec = Record::Declare { id, name: name.clone(), opts: opts.clone() };
        let rx = self.inner.submit_control(rec, Op::Durable, |st| st.table.set_options(id, &opts)).await?;
        rx.await.map_err(|_| StoreError::Closed)??;
        self.queue_info(id).ok_or(StoreError::QueueNotFound(name))
    }

    /// Deletes a queue and everything in it. `Ok(false)` if it did not exist.
    pub async fn delete_queue(&self, id: QueueId) -> Result<bool, StoreError> {
        self.inner.delete_queue(id).await
    }

    /// Marks a queue as used (consumers attached), postponing idle expiry.
    pub fn touch(&self, id: QueueId) {
        let now = self.now_ms();
        if let Ok(mut st) = self.inner.state.lock() {
            st.table.touch(id, now);
        }
    }

    // ---- routing ----

    /// Binds `pattern` in topic space `space` to a queue (durably). Returns
    /// false if that exact binding already existed.
    pub async fn bind(&self, space: &str, pattern: &Pattern, id: QueueId) -> Result<bool, StoreError> {
        self.change_binding(space, pattern, id, true).await
    }

    /// Removes a binding (durably). Returns false if it did not exist.
    pub async fn unbind(&self, space: &str, pattern: &Pattern, id: QueueId) -> Result<bool, StoreError> {
        self.change_binding(space, pattern, id, false).await
    }

    async fn change_binding(&self, space: &str, pattern: &Pattern, id: QueueId, add: bool) -> Result<bool, StoreError> {
        let canonical = pattern.to_canonical();
        if space.is_empty() || space.len() > u16::MAX as usize || canonical.len() > u16::MAX as usize {
            return Err(StoreError::InvalidArgument("topic space or pattern too long".into()));
        }
        let rec = if add {
            Record::Bind { space: space.to_owned(), pattern: canonical, id }
        } else {
            Record::Unbind { space: space.to_owned(), pattern: canonical, id }
        };
        let mut changed = false;
        let rx = self
            .inner
            .submit_control(rec, Op::Durable, |st| {
                if !st.table.exists(id) {
                    return Err(StoreError::QueueNotFound(format!("id {:#x}", id.0)));
                }
                changed = if add { st.bind(space, pattern, id) } else { st.unbind(space, pattern, id) };
                Ok(())
            })
            .await?;
        // Redundant records are harmless, but waiting for them keeps "bound" meaning "durably bound".
        rx.await.map_err(|_| StoreError::Closed)??;
        Ok(changed)
    }

    /// The queues whose bindings in `space` match `topic` (each once).
    /// `dollar_rule`: MQTT's rule that first-level wildcards skip `$` topics.
    pub fn route(&self, space: &str, topic: &[&str], dollar_rule: bool) -> Vec<QueueId> {
        self.inner.state.lock().map(|st| st.route(space, topic, dollar_rule)).unwrap_or_default()
    }

    /// Whether any binding in `space` could match a topic whose first level
    /// is `first` (see `TopicTrie::may_match_under`).
    pub fn may_route_under(&self, space: &str, first: &str, dollar_rule: bool) -> bool {
        self.inner.state.lock().map(|st| st.spaces.get(space).is_some_and(|t| t.may_match_under(first, dollar_rule))).unwrap_or(false)
    }

    /// Every binding of a queue (admin, AMQP unbind-on-delete bookkeeping).
    pub fn bindings_of(&self, id: QueueId) -> Vec<(String, Pattern)> {
        self.inner
            .state
            .lock()
            .map(|st| st.bindings_of.get(&id).map(|v| v.iter().map(|(s, p)| (s.to_string(), p.clone())).collect()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Routes and appends: stored once, indexed into every matching queue.
    /// `Ok(None)` when nothing matched (unroutable: AMQP `mandatory` returns it).
    pub async fn publish(&self, space: &str, topic: &[&str], dollar_rule: bool, msg: Message) -> Result<Option<Appended>, StoreError> {
        let targets = self.route(space, topic, dollar_rule);
        if targets.is_empty() {
            return Ok(None);
        }
        self.append(msg, &targets).await.map(Some)
    }

    // ---- append ----

    /// Appends one message, stored once and indexed into every target queue,
    /// and waits until it is as durable as the fsync policy promises.
    pub async fn append(&self, msg: Message, targets: &[QueueId]) -> Result<Appended, StoreError> {
        self.submit(msg, targets).await?.wait().await
    }

    /// Hands a message to the log writer and returns at once with a ticket;
    /// await the ticket for the acknowledgement (or drop it: fire and forget).
    pub async fn submit(&self, msg: Message, targets: &[QueueId]) -> Result<Ticket, StoreError> {
        self.submit_known_crc(msg, targets, None).await
    }

    /// [`Store::submit`] for a caller that already knows the CRC-32C of
    /// `msg.payload[known.from..]` (it verified a checksum that came with
    /// the payload): the log combines it into the record's checksum instead
    /// of reading those bytes again. The record on disk is the same.
    pub async fn submit_known_crc(&self, msg: Message, targets: &[QueueId], known: Option<KnownCrc>) -> Result<Ticket, StoreError> {
        let size = check_submit(&msg, targets)?;
        let permit = self.inner.tx.reserve().await.map_err(|_| StoreError::Closed)?;
        let now = self.now_ms();
        let mut st = lock(&self.inner.state)?;
        self.inner.check_open()?;
        self.inner.submit_locked(&mut st, permit, Checked { msg, size, known }, targets, now)
    }

    /// Hands several messages to the log writer at once, in order: one
    /// reservation in the writer's channel and one state lock per chunk
    /// instead of one per message (a protocol's publishes from one socket
    /// read). Each message gets its own result, in the order given; a
    /// message refused by the checks of [`submit`](Self::submit) does not
    /// stop the others. Tickets resolve in log order, like separate submits.
    pub async fn submit_many<'a>(&self, batch: impl IntoIterator<Item = (Message, &'a [QueueId])>) -> Vec<Result<Ticket, StoreError>> {
        let mut checked: Vec<(Message, &'a [QueueId], Result<usize, StoreError>)> = batch
            .into_iter()
            .map(|(m, t)| {
                let size = check_submit(&m, t);
                (m, t, size)
            })
            .collect();
        let mut out = Vec::with_capacity(checked.len());
        let mut rest = checked.drain(..).peekable();
        while rest.peek().is_some() {
            let chunk: Vec<_> = rest.by_ref().take(SUBMIT_MANY_CHUNK).collect();
            let wanted = chunk.iter().filter(|(_, _, size)| size.is_ok()).count();
            let mut permits = match self.inner.tx.reserve_many(wanted).await {
                Ok(p) => p,
                Err(_) => {
                    out.extend(chunk.into_iter().map(|(_, _, size)| size.and(Err(StoreError::Closed))));
                    continue;
                }
            };
            let now = self.now_ms();
            let mut st = match lock(&self.inner.state) {
                Ok(st) => st,
                Err(_) => {
                    out.extend(chunk.into_iter().map(|(_, _, size)| size.and(Err(StoreError::Poisoned))));
                    continue;
                }
            };
            for (msg, targets, size) in chunk {
                out.push(match size {
                    Err(e) => Err(e),
                    Ok(size) => match permits.next() {
                        Some(permit) => self
                            .inner
                            .check_open()
                            .and_then(|()| self.inner.submit_locked(&mut st, permit, Checked { msg, size, known: None }, targets, now)),
                        None => Err(StoreError::Closed),
                    },
                });
            }
        }
        out
    }

    /// Forces an fsync of everything written so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let reply: writer_msg::SyncReply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.inner.tx.send(writer_msg::Msg::Sync(reply)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
    }

    // ---- consumption by offset ----

    /// Reads whole records from the one holding `from`, up to the limits.
    pub fn read(&self, id: QueueId, from: u64, max_records: usize, max_bytes: u64) -> Result<ReadResult, StoreError> {
        let r = lock(&self.inner.state)?.table.read_stream(id, from, max_records, max_bytes)?;
        let mut messages = Vec::with_capacity(r.batches.len());
        for b in r.batches {
            messages.push(StoredMessage { offset: b.offset, pos: b.pos, message: self.inner.read_message(b.pos, b.total)? });
        }
        Ok(ReadResult { messages, start_offset: r.start_offset, next_offset: r.next_offset })
    }

    /// Like [`Store::read`], but waits up to `wait` for something at or after `from`.
    pub async fn read_wait(
        &self,
        id: QueueId,
        from: u64,
        max_records: usize,
        max_bytes: u64,
        wait: Duration,
    ) -> Result<ReadResult, StoreError> {
        if wait.is_zero() {
            // No waiting, so no waiter to register (a lock and a map entry).
            return self.read(id, from, max_records, max_bytes);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.inner.waiter(id)?;
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let r = self.read(id, from, max_records, max_bytes);
            let done = match &r {
                Ok(r) => !r.messages.is_empty() || tokio::time::Instant::now() >= deadline || self.inner.closed.load(Ordering::Acquire),
                Err(_) => true,
            };
            if done {
                return r;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Bytes a stream holds from the record holding `from` on, counted up to
    /// `cap` (from the index: no read). For long-poll readiness checks.
    pub fn stream_bytes_from(&self, id: QueueId, from: u64, cap: u64) -> u64 {
        self.inner.state.lock().map(|st| st.table.stream_bytes_from(id, from, cap)).unwrap_or(0)
    }

    /// A long poll over many queues (a Kafka fetch of many partitions):
    /// returns `Ok(true)` as soon as `ready()` says so, `Ok(false)` once
    /// `wait` has passed (or the store closes). `ready` is asked again each
    /// time a message becomes visible in any of `ids`; the wake-ups are armed
    /// before each check, so nothing arriving in between is missed, and
    /// nothing runs between wake-ups (no polling).
    pub async fn wait_any(&self, ids: &[QueueId], wait: Duration, mut ready: impl FnMut() -> bool) -> Result<bool, StoreError> {
        if ready() {
            return Ok(true);
        }
        if wait.is_zero() {
            return Ok(false);
        }
        if ids.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(ready());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let waiters = unique.iter().map(|&id| self.inner.waiter(id)).collect::<Result<Vec<_>, _>>()?;
        loop {
            let mut armed: Vec<_> = waiters.iter().map(|w| Box::pin(w.notify.notified())).collect();
            for n in armed.iter_mut() {
                n.as_mut().enable();
            }
            if ready() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline || self.inner.closed.load(Ordering::Acquire) {
                return Ok(false);
            }
            let any = std::future::poll_fn(|cx| {
                for n in armed.iter_mut() {
                    if std::future::Future::poll(n.as_mut(), cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                _ = any => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The first offset whose timestamp is at or after `ts_ms` (Kafka ListOffsets).
    pub fn offset_for_timestamp(&self, id: QueueId, ts_ms: u64) -> Result<u64, StoreError> {
        lock(&self.inner.state)?.table.offset_for_timestamp(id, ts_ms)
    }

    /// Durably records a consumer group's position in a queue.
    pub async fn commit_offset(&self, group: &str, id: QueueId, offset: u64) -> Result<(), StoreError> {
        if group.is_empty() || group.len() > u16::MAX as usize {
            return Err(StoreError::InvalidArgument("group names are 1..=65535 bytes".into()));
        }
        let group: Arc<str> = group.into();
        let rec = Record::GroupOffset { id, group: group.to_string(), offset };
        let rx = self
            .inner
            .submit_control(rec, Op::Durable, |st| {
                if !st.table.exists(id) {
                    return Err(StoreError::QueueNotFound(format!("id {:#x}", id.0)));
                }
                st.group_offsets.insert((group.clone(), id), offset);
                Ok(())
            })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
    }

    pub fn committed_offset(&self, group: &str, id: QueueId) -> Option<u64> {
        let st = self.inner.state.lock().ok()?;
        st.group_offsets.get(&(Arc::<str>::from(group), id)).copied()
    }

    /// Every committed offset of `group`, by queue id. Walks all groups'
    /// offsets: meant for admin requests (Kafka OffsetFetch of all
    /// partitions), not for the data path.
    pub fn group_offsets(&self, group: &str) -> Vec<(QueueId, u64)> {
        let Ok(st) = self.inner.state.lock() else { return Vec::new() };
        let mut out: Vec<(QueueId, u64)> =
            st.group_offsets.iter().filter(|((g, _), _)| &**g == group).map(|((_, q), o)| (*q, *o)).collect();
        out.sort_unstable();
        out
    }

    /// The names of the groups with at least one committed offset that start
    /// with `prefix`, sorted. Walks all groups' offsets (admin requests).
    pub fn offset_groups(&self, prefix: &str) -> Vec<String> {
        let Ok(st) = self.inner.state.lock() else { return Vec::new() };
        let names: std::collections::BTreeSet<&str> =
            st.group_offsets.keys().map(|(g, _)| &**g).filter(|g| g.starts_with(prefix)).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Durably forgets every committed offset of `group`; returns how many
    /// there were (0: nothing was written).
    pub async fn delete_group_offsets(&self, group: &str) -> Result<usize, StoreError> {
        if group.is_empty() || group.len() > u16::MAX as usize {
            return Err(StoreError::InvalidArgument("group names are 1..=65535 bytes".into()));
        }
        if self.group_offsets(group).is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        let rec = Record::GroupDelete { group: group.to_owned() };
        let rx = self
            .inner
            .submit_control(rec, Op::Durable, |st| {
                let before = st.group_offsets.len();
                st.group_offsets.retain(|(g, _), _| &**g != group);
                removed = before - st.group_offsets.len();
                Ok(())
            })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)??;
        Ok(removed)
    }

    // ---- consumption by message ----

    /// Receives up to `max` visible messages, each invisible to other
    /// consumers for `invisible`; waits up to `wait` if there are none.
    pub async fn pop(&self, id: QueueId, max: usize, invisible: Duration, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        if wait.is_zero() {
            // No waiting, so no waiter to register (a lock and a map entry).
            return self.pop_once(id, max, invisible).await.map(|(items, _)| items);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.inner.waiter(id)?;
        let result = loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.now_ms();
            let (items, next_at_ms) = match self.pop_once(id, max, invisible).await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            if !items.is_empty() {
                break Ok(items);
            }
            let tnow = tokio::time::Instant::now();
            if tnow >= deadline || self.inner.closed.load(Ordering::Acquire) {
                break Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(at) = next_at_ms {
                until = until.min(tnow + Duration::from_millis(at.saturating_sub(now).max(1)));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        };
        drop(waiter);
        result
    }

    /// One attempt: the deliveries, and when something may next become
    /// deliverable if there were none. Dead letters found on the way are moved.
    async fn pop_once(&self, id: QueueId, max: usize, invisible: Duration) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
        let now = self.now_ms();
        let out = lock(&self.inner.state)?.table.pop(id, max, invisible.as_millis() as u64, now)?;
        if !out.dead.is_empty() {
            self.inner.dead_letter(out.dead).await?;
        }
        Ok((self.inner.deliveries(out.items)?, out.next_at_ms))
    }

    /// The next `max` ready messages of a queue in the order [`Store::pop`]
    /// would hand them out, without delivering them: no receipt, no
    /// delivery count, nothing made invisible. For protocols that expire a
    /// queue's head while nobody reads it (AMQP x-message-ttl).
    pub fn peek(&self, id: QueueId, max: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let found = lock(&self.inner.state)?.table.peek(id, max)?;
        found
            .into_iter()
            .map(|(offset, pos, total)| Ok(StoredMessage { offset, pos, message: self.inner.read_message(pos, total)? }))
            .collect()
    }

    /// Acknowledges a delivery: the message leaves the queue for good.
    pub async fn ack(&self, receipt: Receipt) -> Result<(), StoreError> {
        let now = self.now_ms();
        let rec = Record::Ack { id: receipt.queue, offsets: vec![receipt.offset] };
        let rx = self.inner.submit_control(rec, Op::Durable, |st| st.table.ack(receipt, now).map(drop)).await?;
        rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
    }

    /// Acknowledges many deliveries with one record per queue (AMQP `multiple`,
    /// Kafka share acks). Stale receipts are skipped and counted in the result.
    pub async fn ack_many(&self, receipts: &[Receipt]) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let mut by_queue: BTreeMap<QueueId, Vec<Receipt>> = BTreeMap::new();
        for r in receipts {
            by_queue.entry(r.queue).or_default().push(*r);
        }
        let mut stale = 0;
        let mut waits = Vec::with_capacity(by_queue.len());
        for (id, rs) in by_queue {
            let offsets: Vec<u64> = rs.iter().map(|r| r.offset).collect();
            let rx = self
                .inner
                .submit_control(Record::Ack { id, offsets }, Op::Durable, |st| {
                    for r in rs {
                        if st.table.ack(r, now).is_err() {
                            stale += 1;
                        }
                    }
                    Ok(())
                })
                .await?;
            waits.push(rx);
        }
        for rx in waits {
            rx.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(stale)
    }

    /// Negative acknowledgement: requeue (optionally after a delay), dead-letter or drop.
    pub async fn nack(&self, receipt: Receipt, action: NackAction) -> Result<(), StoreError> {
        let now = self.now_ms();
        let outcome = lock(&self.inner.state)?.table.nack(receipt, action, now)?;
        match outcome {
            NackOutcome::Requeued { deliveries, visible_at_ms } => {
                let rec = Record::Requeue { id: receipt.queue, offset: receipt.offset, deliveries, visible_at_ms };
                let rx = self.inner.submit_control(rec, Op::Durable, |_| Ok(())).await?;
                self.inner.wake(receipt.queue);
                rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
            }
            NackOutcome::DeadLettered(d) => self.inner.dead_letter(vec![d]).await,
            NackOutcome::Dropped { .. } => {
                let rec = Record::Ack { id: receipt.queue, offsets: vec![receipt.offset] };
                let rx = self.inner.submit_control(rec, Op::Durable, |_| Ok(())).await?;
                rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
            }
        }
    }

    /// Extends (or shortens) how long a delivery stays invisible, from now.
    pub fn change_invisible(&self, receipt: Receipt, invisible: Duration) -> Result<(), StoreError> {
        let now = self.now_ms();
        lock(&self.inner.state)?.table.change_invisible(receipt, invisible.as_millis() as u64, now)?;
        self.inner.wake(receipt.queue);
        Ok(())
    }

    /// Wakes every waiting pop/read so it looks again (tests that move a manual clock).
    pub fn notify_all(&self) {
        self.inner.notify_all();
    }

    /// Runs retention, idle expiry and segment reclaim once.
    pub fn run_maintenance(&self) -> Result<MaintenanceReport, StoreError> {
        self.inner.run_maintenance()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The checks an append must pass before it is queued; returns the
/// record's size as [`RECORD_BYTES_MAX`] counts it.
fn check_submit(msg: &Message, targets: &[QueueId]) -> Result<usize, StoreError> {
    let size = msg.payload.len() + msg.key.len() + msg.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
    if size > RECORD_BYTES_MAX {
        return Err(StoreError::RecordTooLarge { size, max: RECORD_BYTES_MAX });
    }
    if targets.len() > DISPATCH_COUNT_MAX {
        return Err(StoreError::InvalidArgument(format!("a message can go to at most {DISPATCH_COUNT_MAX} queues at once")));
    }
    if msg.headers.len() > u16::MAX as usize || msg.headers.iter().any(|(k, _)| k.len() > u16::MAX as usize) {
        return Err(StoreError::InvalidArgument("too many headers or a header name too long".into()));
    }
    if msg.group.as_ref().is_some_and(|g| g.len() > limits::GROUP_KEY_BYTES_MAX) {
        return Err(StoreError::InvalidArgument(format!("message group keys are at most {} bytes", limits::GROUP_KEY_BYTES_MAX)));
    }
    Ok(size)
}

/// Messages [`Store::submit_many`] queues per reservation and lock hold:
/// bounds how long the state lock is held and how much of the writer's
/// channel one caller takes at once.
const SUBMIT_MANY_CHUNK: usize = 256;
const _: () = assert!(SUBMIT_MANY_CHUNK <= limits::WRITE_QUEUE_DEPTH_MAX);

/// A message that passed [`check_submit`], with its size and, when the
/// caller knows it, the CRC-32C of the tail of its payload.
struct Checked {
    msg: Message,
    size: usize,
    known: Option<KnownCrc>,
}

impl Inner {
    /// Assigns offsets and queues one checked message for the writer, under
    /// the state lock (the log's order is the offsets' order).
    fn submit_locked(
        &self,
        st: &mut State,
        permit: mpsc::Permit<'_, writer_msg::Msg<Op>>,
        checked: Checked,
        targets: &[QueueId],
        now: u64,
    ) -> Result<Ticket, StoreError> {
        let Checked { mut msg, size, known } = checked;
        msg.span = msg.span.max(1);
        let timestamp_ms = if msg.timestamp_ms == 0 { now } else { msg.timestamp_ms };
        let (done, rx) = oneshot::channel();
        if !targets.is_empty() && targets.iter().all(|q| q.is_transient()) {
            return self.append_in_memory(st, msg, targets, timestamp_ms, size as u64, done, rx);
        }
        let mut dispatch = Vec::with_capacity(targets.len());
        for &q in targets {
            let span = if st.table.options(q).map(|o| o.kind) == Some(QueueKind::Stream) { msg.span } else { 1 };
            dispatch.push((q, st.table.reserve_offsets(q, span)?));
        }
        // Sized for the whole head (headers included): no regrowth while encoding.
        let headers: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        let mut head = Vec::with_capacity(64 + msg.key.len() + headers + targets.len() * 16);
        record::encode_message_head(&MessageHead { relocated: false, timestamp_ms, dispatch: &dispatch, msg: &msg }, &mut head);
        let op = Op::Message {
            dispatch: dispatch.clone(),
            timestamp_ms,
            deliver_at_ms: msg.deliver_at_ms,
            priority: msg.priority,
            span: msg.span,
            group: msg.group.clone(),
        };
        permit.send(writer_msg::Msg::Append(Submit { head, tail: msg.payload, tail_crc: known, meta: op, done: Some(done) }));
        Ok(Ticket { rx, offsets: dispatch })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if self.log.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    /// Applies `apply` to the state and queues `rec` for the log under one
    /// lock, so the record's place in the log matches the state change.
    async fn submit_control(
        &self,
        rec: Record,
        op: Op,
        apply: impl FnOnce(&mut State) -> Result<(), StoreError>,
    ) -> Result<Pending, StoreError> {
        if !needs_log(&rec) {
            return self.apply_in_memory(apply);
        }
        let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
        self.send_control(permit, &rec, op, apply)
    }

    /// Like `submit_control` from a plain thread (maintenance): never blocks
    /// while holding the state lock.
    fn submit_control_blocking(
        &self,
        rec: Record,
        op: Op,
        apply: impl FnOnce(&mut State) -> Result<(), StoreError>,
    ) -> Result<Pending, StoreError> {
        if !needs_log(&rec) {
            return self.apply_in_memory(apply);
        }
        let permit = self.reserve_blocking()?;
        self.send_control(permit, &rec, op, apply)
    }

    fn send_control(
        &self,
        permit: mpsc::Permit<'_, writer_msg::Msg<Op>>,
        rec: &Record,
        op: Op,
        apply: impl FnOnce(&mut State) -> Result<(), StoreError>,
    ) -> Result<Pending, StoreError> {
        let mut head = Vec::with_capacity(64);
        record::encode(rec, &mut head);
        let (done, rx) = oneshot::channel();
        let mut st = lock(&self.state)?;
        self.check_open()?;
        apply(&mut st)?;
        permit.send(writer_msg::Msg::Append(Submit { head, tail: Bytes::new(), tail_crc: None, meta: op, done: Some(done) }));
        Ok(rx)
    }

    /// A place in the writer's channel, waited for without an async runtime.
    fn reserve_blocking(&self) -> Result<mpsc::Permit<'_, writer_msg::Msg<Op>>, StoreError> {
        loop {
            match self.tx.try_reserve() {
                Ok(p) => return Ok(p),
                Err(mpsc::error::TrySendError::Full(())) => std::thread::sleep(Duration::from_millis(1)),
                Err(mpsc::error::TrySendError::Closed(())) => return Err(StoreError::Closed),
            }
        }
    }

    /// A change that concerns only transient queues: applied, never logged.
    fn apply_in_memory(&self, apply: impl FnOnce(&mut State) -> Result<(), StoreError>) -> Result<Pending, StoreError> {
        let mut st = lock(&self.state)?;
        self.check_open()?;
        apply(&mut st)?;
        st.apply_live(&self.log);
        let (done, rx) = oneshot::channel();
        let _ = done.send(Ok(0));
        Ok(rx)
    }

    /// An append whose targets are all transient: indexed at once with its
    /// body kept in memory; the log never sees it.
    #[allow(clippy::too_many_arguments)]
    fn append_in_memory(
        &self,
        st: &mut State,
        mut msg: Message,
        targets: &[QueueId],
        timestamp_ms: u64,
        size: u64,
        done: oneshot::Sender<Result<u64, StoreError>>,
        rx: oneshot::Receiver<Result<u64, StoreError>>,
    ) -> Result<Ticket, StoreError> {
        if st.mem_bytes + size > self.cfg.transient_bytes_max {
            return Err(StoreError::MemoryLimit(self.cfg.transient_bytes_max));
        }
        let now = self.clock.now_ms();
        let pos = MEM_POS | st.mem_next;
        st.mem_next += 1;
        msg.timestamp_ms = timestamp_ms;
        let total = size.min(u32::MAX as u64) as u32;
        let mut offsets = Vec::with_capacity(targets.len());
        for &q in targets {
            let span = if st.table.options(q).map(|o| o.kind) == Some(QueueKind::Stream) { msg.span } else { 1 };
            let offset = st.table.reserve_offsets(q, span)?;
            offsets.push((q, offset));
        }
        let group = msg.group.clone();
        for &(q, offset) in &offsets {
            let e = IndexEntry {
                offset,
                span: msg.span,
                pos,
                total,
                timestamp_ms,
                deliver_at_ms: msg.deliver_at_ms,
                priority: msg.priority,
                group: group.as_deref(),
            };
            st.table.index(q, e, now)?;
        }
        st.mem.insert(pos, MemBody { msg, size, refs: 0 });
        st.mem_bytes += size;
        st.apply_live(&self.log);
        if let Ok(w) = self.waiters.lock() {
            for (q, _) in &offsets {
                if let Some(n) = w.get(q) {
                    n.notify_waiters();
                }
            }
        }
        let _ = done.send(Ok(pos));
        Ok(Ticket { rx, offsets })
    }

    async fn declare_queue(&self, name: &str, opts: QueueOptions) -> Result<QueueInfo, StoreError> {
        if opts.dead_letter.as_deref() == Some(name) {
            return Err(StoreError::InvalidArgument("a queue cannot be its own dead-letter queue".into()));
        }
        if opts.transient {
            let now = self.clock.now_ms();
            let mut st = lock(&self.state)?;
            self.check_open()?;
            let (id, _) = st.table.declare(name, &opts, now)?;
            return st.table.info(id).ok_or_else(|| StoreError::QueueNotFound(name.into()));
        }
        let now = self.clock.now_ms();
        let mut created = None;
        let rx = {
            let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
            let mut st = lock(&self.state)?;
            self.check_open()?;
            let (id, is_new) = st.table.declare(name, &opts, now)?;
            if is_new {
                let mut head = Vec::with_capacity(64 + name.len());
                record::encode(&Record::Declare { id, name: name.to_owned(), opts: opts.clone() }, &mut head);
                let (done, rx) = oneshot::channel();
                permit.send(writer_msg::Msg::Append(Submit {
                    head,
                    tail: Bytes::new(),
                    tail_crc: None,
                    meta: Op::Durable,
                    done: Some(done),
                }));
                created = Some(id);
                Some(rx)
            } else {
                None
            }
        };
        if let Some(rx) = rx {
            rx.await.map_err(|_| StoreError::Closed)??;
        }
        let st = lock(&self.state)?;
        let id = created.or_else(|| st.table.lookup(name)).ok_or_else(|| StoreError::QueueNotFound(name.into()))?;
        st.table.info(id).ok_or_else(|| StoreError::QueueNotFound(name.into()))
    }

    async fn delete_queue(&self, id: QueueId) -> Result<bool, StoreError> {
        let mut existed = false;
        let rx = self
            .submit_control(Record::Delete { id }, Op::Durable, |st| {
                existed = st.table.delete(id);
                st.forget_queue(id);
                Ok(())
            })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)??;
        self.wake(id);
        Ok(existed)
    }

    fn read_message(&self, pos: u64, total: u32) -> Result<Message, StoreError> {
        if pos & MEM_POS != 0 {
            let st = lock(&self.state)?;
            return st
                .mem
                .get(&pos)
                .map(|b| b.msg.clone())
                .ok_or_else(|| StoreError::InvalidArgument(format!("memory body {:#x} is gone", pos & !MEM_POS)));
        }
        let body = self.log.read(pos, total)?;
        match record::decode(body)? {
            Record::Message { msg, .. } => Ok(msg),
            _ => Err(StoreError::InvalidArgument(format!("record at {pos} is not a message"))),
        }
    }

    fn deliveries(&self, items: Vec<PopItem>) -> Result<Vec<Delivery>, StoreError> {
        items
            .into_iter()
            .map(|it| {
                Ok(Delivery {
                    receipt: it.receipt,
                    deliveries: it.deliveries,
                    offset: it.offset,
                    message: self.read_message(it.pos, it.total)?,
                })
            })
            .collect()
    }

    /// Moves dead letters into their dead-letter queue (stored once: only a
    /// new index entry is written) or records that they were dropped.
    async fn dead_letter(&self, dead: Vec<DeadLetter>) -> Result<(), StoreError> {
        for d in dead {
            let dlq = match &d.to {
                Some(name) => Some(self.declare_queue_any(name).await?),
                None => None,
            };
            let rx = match dlq {
                // A body that only lives in memory must be written out to reach a
                // durable DLQ; into a transient DLQ anything is just indexed.
                Some(q) if d.pos & MEM_POS != 0 || q.is_transient() => {
                    let msg = self.read_message(d.pos, d.total)?;
                    if q.is_transient() && d.pos & MEM_POS == 0 {
                        let now = self.clock.now_ms();
                        let mut st = lock(&self.state)?;
                        let offset = st.table.reserve_offsets(q, 1)?;
                        let e = IndexEntry {
                            offset,
                            span: 1,
                            pos: d.pos,
                            total: d.total,
                            timestamp_ms: msg.timestamp_ms,
                            deliver_at_ms: 0,
                            priority: msg.priority,
                            group: msg.group.as_deref(),
                        };
                        st.table.index(q, e, now)?;
                        st.apply_live(&self.log);
                    } else {
                        self.append_for_dead_letter(msg, q).await?.wait().await?;
                    }
                    // Into the DLQ first, then out of the source: a crash in
                    // between leaves a copy in both, never in neither.
                    self.forget_source(&d).await?;
                    continue;
                }
                Some(q) => {
                    let meta = self.read_meta(d.pos, d.total)?;
                    let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
                    let mut st = lock(&self.state)?;
                    self.check_open()?;
                    let offset = st.table.reserve_offsets(q, 1)?;
                    let mut head = Vec::with_capacity(64);
                    record::encode(
                        &Record::Dispatch { src_pos: d.pos, src_total: d.total, id: q, offset, from: Some((d.from, d.offset)) },
                        &mut head,
                    );
                    let (done, rx) = oneshot::channel();
                    let op = Op::Dispatch { id: q, offset, src_pos: d.pos, src_total: d.total, src: Box::new(meta) };
                    permit.send(writer_msg::Msg::Append(Submit { head, tail: Bytes::new(), tail_crc: None, meta: op, done: Some(done) }));
                    rx
                }
                None => {
                    self.forget_source(&d).await?;
                    continue;
                }
            };
            rx.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(())
    }

    /// Records that a dead letter left its source queue (already removed in memory).
    async fn forget_source(&self, d: &DeadLetter) -> Result<(), StoreError> {
        let rx = self.submit_control(Record::Ack { id: d.from, offsets: vec![d.offset] }, Op::Durable, |_| Ok(())).await?;
        rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
    }

    /// Appends a copy of a memory-only message to a (durable or transient) queue.
    async fn append_for_dead_letter(&self, mut msg: Message, q: QueueId) -> Result<Ticket, StoreError> {
        let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
        let (done, rx) = oneshot::channel();
        let mut st = lock(&self.state)?;
        self.check_open()?;
        msg.deliver_at_ms = 0;
        let ts = msg.timestamp_ms;
        if q.is_transient() {
            let size = (msg.payload.len() + msg.key.len()) as u64;
            drop(permit);
            return self.append_in_memory(&mut st, msg, &[q], ts, size, done, rx);
        }
        let offset = st.table.reserve_offsets(q, 1)?;
        let dispatch = vec![(q, offset)];
        let mut head = Vec::with_capacity(64 + msg.key.len());
        record::encode_message_head(&MessageHead { relocated: false, timestamp_ms: ts, dispatch: &dispatch, msg: &msg }, &mut head);
        let op = Op::Message {
            dispatch: dispatch.clone(),
            timestamp_ms: ts,
            deliver_at_ms: 0,
            priority: msg.priority,
            span: 1,
            group: msg.group.clone(),
        };
        permit.send(writer_msg::Msg::Append(Submit { head, tail: msg.payload, tail_crc: None, meta: op, done: Some(done) }));
        Ok(Ticket { rx, offsets: dispatch })
    }

    /// Finds a queue by name or declares it with default options.
    async fn declare_queue_any(&self, name: &str) -> Result<QueueId, StoreError> {
        if let Some(id) = lock(&self.state)?.table.lookup(name) {
            return Ok(id);
        }
        Ok(self.declare_queue(name, QueueOptions::default()).await?.id)
    }

    fn read_meta(&self, pos: u64, total: u32) -> Result<IndexMeta, StoreError> {
        let body = self.log.read(pos, total)?;
        match record::decode(body)? {
            Record::Message { timestamp_ms, msg, .. } => Ok(IndexMeta { timestamp_ms, priority: msg.priority, group: msg.group }),
            _ => Err(StoreError::InvalidArgument(format!("record at {pos} is not a message"))),
        }
    }

    /// Runs on the writer thread after each batch: makes messages visible
    /// in log order, then wakes whoever waits on those queues.
    fn on_commit(&self, batch: &mut [Committed<Op>]) {
        let now = self.clock.now_ms();
        let mut touched: Vec<QueueId> = Vec::new();
        {
            let Ok(mut st) = self.state.lock() else { return };
            for c in batch.iter_mut() {
                match &c.meta {
                    Op::Message { dispatch, timestamp_ms, deliver_at_ms, priority, span, group } => {
                        for &(q, offset) in dispatch {
                            let e = IndexEntry {
                                offset,
                                span: *span,
                                pos: c.pos,
                                total: c.total,
                                timestamp_ms: *timestamp_ms,
                                deliver_at_ms: *deliver_at_ms,
                                priority: *priority,
                                group: group.as_deref(),
                            };
                            // A queue deleted while the message was in flight to the log is fine to miss.
                            if st.table.index(q, e, now).is_ok() {
                                touched.push(q);
                            }
                        }
                    }
                    Op::Dispatch { id, offset, src_pos, src_total, src } => {
                        let e = IndexEntry {
                            offset: *offset,
                            span: 1,
                            pos: *src_pos,
                            total: *src_total,
                            timestamp_ms: src.timestamp_ms,
                            deliver_at_ms: 0,
                            priority: src.priority,
                            group: src.group.as_deref(),
                        };
                        if st.table.index(*id, e, now).is_ok() {
                            touched.push(*id);
                        }
                    }
                    Op::Relocate { moves, old_pos } => {
                        for &(q, offset) in moves {
                            st.table.relocate(q, offset, Some(*old_pos), c.pos, c.total);
                        }
                    }
                    Op::Durable => {}
                }
            }
            st.apply_live(&self.log);
        }
        touched.sort_unstable();
        touched.dedup();
        if let Ok(w) = self.waiters.lock() {
            for q in touched {
                if let Some(n) = w.get(&q) {
                    n.notify_waiters();
                }
            }
        }
    }

    /// Registers interest in `id`. The registration ends when the guard is
    /// dropped, also when a waiting future is cancelled mid-wait (a consumer
    /// that disconnects), so the map only holds queues somebody waits on and
    /// idle expiry is never blocked by a waiter that left.
    fn waiter(&self, id: QueueId) -> Result<Waiter<'_>, StoreError> {
        let notify = lock(&self.waiters)?.entry(id).or_default().clone();
        Ok(Waiter { inner: self, id, notify })
    }

    fn wake(&self, id: QueueId) {
        if let Ok(w) = self.waiters.lock() {
            if let Some(n) = w.get(&id) {
                n.notify_waiters();
            }
        }
    }

    fn notify_all(&self) {
        if let Ok(w) = self.waiters.lock() {
            for n in w.values() {
                n.notify_waiters();
            }
        }
    }

    fn run_maintenance(&self) -> Result<MaintenanceReport, StoreError> {
        let _one_at_a_time = lock(&self.maintenance)?;
        let now = self.clock.now_ms();
        let mut report = MaintenanceReport::default();
        // One chunk of queues per lock hold, so 10 M queues do not stall appends.
        let waiting: Vec<QueueId> = lock(&self.waiters)?.keys().copied().collect();
        let mut expired = Vec::new();
        let chunks = lock(&self.state)?.table.maintained_chunks();
        for c in chunks {
            let mut st = lock(&self.state)?;
            report.batches_dropped += st.table.apply_retention_chunk(c, now);
            st.apply_live(&self.log);
            let mut ex = st.table.idle_expired_chunk(c, now);
            ex.retain(|q| !waiting.contains(q));
            expired.extend(ex);
        }
        let any = !expired.is_empty();
        for id in expired {
            let rx = self.submit_control_blocking(Record::Delete { id }, Op::Durable, |st| {
                st.table.delete(id);
                st.forget_queue(id);
                Ok(())
            })?;
            report.queues_expired += 1;
            drop(rx);
        }
        if any {
            // The channel is FIFO: once this sync is done, so are the deletes.
            writer_msg::sync_blocking(&self.tx)?;
        }
        let reclaimed = self.reclaim()?;
        report.segments_deleted = reclaimed.segments;
        report.bytes_freed = reclaimed.bytes;
        report.records_copied = reclaimed.copies;
        Ok(report)
    }

    /// Copies the live messages of the oldest sealed segments forward (same
    /// queues, same offsets) while each is mostly dead, up to a copy budget,
    /// so the next reclaim can delete them: one unconsumed message must not
    /// pin the whole log. Stops at the first segment that is mostly live.
    fn compact_oldest(&self, bases: &[u64]) -> Result<usize, StoreError> {
        let mut copies = 0;
        let mut budget = COMPACT_BYTES_PER_RUN;
        for w in bases.windows(2) {
            let (from, to) = (w[0], w[1]);
            let live = {
                let st = lock(&self.state)?;
                st.live.get(&from).copied().unwrap_or(0).max(0) as u64
            };
            if live == 0 {
                continue;
            }
            if live.saturating_mul(COMPACT_LIVE_RATIO_INV) >= to - from || live > budget {
                break;
            }
            budget -= live;
            copies += self.compact_segment(from, to, live)?;
        }
        if copies > 0 {
            writer_msg::sync_blocking(&self.tx)?;
        }
        Ok(copies)
    }

    /// Copies the live messages of segment `[from, to)` forward. Transient
    /// memory: one 32-byte entry per live index entry of the segment (a
    /// quarter of it at most is live, or it would not be compacted), and
    /// the copies waiting for the writer, at most `COMPACT_UNWRITTEN_BYTES`.
    fn compact_segment(&self, from: u64, to: u64, live: u64) -> Result<usize, StoreError> {
        // A chunk of queues per lock hold, so appends do not wait for a walk
        // of every index. Entries that change between holds are safe: each
        // copy is checked again under the lock below, and an entry missed
        // (a dead-letter indexed meanwhile) keeps the segment live, so it is
        // not reclaimed, only compacted again on a later run.
        let chunks = lock(&self.state)?.table.hot_chunks();
        let mut entries = Vec::new();
        for c in chunks {
            lock(&self.state)?.table.entries_in_chunk(c, from, to, &mut entries);
        }
        // One copy per stored record, however many queues index it.
        entries.sort_unstable_by_key(|&(_, _, pos, _)| pos);
        let mut copies = 0;
        let mut unwritten = 0u64;
        for same in entries.chunk_by(|a, b| a.2 == b.2) {
            let (pos, total) = (same[0].2, same[0].3);
            let (timestamp_ms, msg) = match record::decode(self.log.read(pos, total)?)? {
                Record::Message { timestamp_ms, msg, .. } => (timestamp_ms, msg),
                _ => continue,
            };
            let permit = self.reserve_blocking()?;
            // Under the lock, so an ack cannot fall between the check and the
            // copy: a copy of an already acked message would come back on replay.
            let st = lock(&self.state)?;
            self.check_open()?;
            let moves: Vec<(QueueId, u64)> =
                same.iter().map(|&(q, o, _, _)| (q, o)).filter(|&(q, o)| st.table.pos_of(q, o) == Some(pos)).collect();
            if moves.is_empty() {
                continue;
            }
            let mut head = Vec::with_capacity(64 + msg.key.len() + moves.len() * 16);
            record::encode_message_head(&MessageHead { relocated: true, timestamp_ms, dispatch: &moves, msg: &msg }, &mut head);
            permit.send(writer_msg::Msg::Append(Submit {
                head,
                tail: msg.payload,
                tail_crc: None,
                meta: Op::Relocate { moves, old_pos: pos },
                done: None,
            }));
            drop(st);
            copies += 1;
            unwritten += u64::from(total);
            if unwritten >= COMPACT_UNWRITTEN_BYTES {
                // Each copy holds its body until written: wait for the writer
                // rather than queue up a whole segment's worth of them.
                writer_msg::sync_blocking(&self.tx)?;
                unwritten = 0;
            }
        }
        tracing::debug!(segment = from, live_bytes = live, copies, "compacted a segment");
        Ok(copies)
    }

    /// Deletes the oldest segments that hold no live message. Queue
    /// declarations and group offsets in them are first saved in a metadata
    /// snapshot (so they need not be copied forward record by record).
    fn reclaim(&self) -> Result<Reclaimed, StoreError> {
        let bases = self.log.segment_bases();
        if bases.len() < 2 {
            return Ok(Reclaimed::default());
        }
        // The prefix of sealed segments with no live entry: [bases[0], cut).
        let cut = {
            let st = lock(&self.state)?;
            let mut cut = None;
            for w in bases.windows(2) {
                if st.live.get(&w[0]).copied().unwrap_or(0) > 0 {
                    break;
                }
                cut = Some(w[1]);
            }
            cut
        };
        let Some(cut) = cut else {
            return Ok(Reclaimed { copies: self.compact_oldest(&bases)?, ..Reclaimed::default() });
        };
        // Everything before `cut` is written; the snapshot must cover at
        // least that far so no declaration or group offset below it is lost.
        let snap_at = writer_msg::sync_blocking(&self.tx)?;
        snapshot::write(&self.cfg.data_dir, &self.state, snap_at.max(cut))?;
        let freed = self.log.delete_segments_before(cut)?;
        let mut st = lock(&self.state)?;
        st.live.retain(|&b, _| b >= cut);
        st.bases.retain(|&b| b >= cut);
        let segments = bases.iter().filter(|&&b| b < cut).count();
        Ok(Reclaimed { segments, bytes: freed, copies: 0 })
    }
}

/// What one reclaim did: segments deleted and their bytes, or records
/// copied forward by compaction.
#[derive(Default)]
struct Reclaimed {
    segments: usize,
    bytes: u64,
    copies: usize,
}

/// Whether a control record changes durable state: records about transient
/// queues only are applied in memory and never written.
fn needs_log(rec: &Record) -> bool {
    match rec {
        Record::Ack { id, .. }
        | Record::Requeue { id, .. }
        | Record::GroupOffset { id, .. }
        | Record::Delete { id }
        | Record::Bind { id, .. }
        | Record::Unbind { id, .. } => !id.is_transient(),
        _ => true,
    }
}

/// Compact the oldest segment when less than 1/4 of it is live: copying
/// costs at most a quarter of a segment's writes to free a whole segment.
const COMPACT_LIVE_RATIO_INV: u64 = 4;
/// Bytes one maintenance run may copy forward, so compaction cannot starve appends.
const COMPACT_BYTES_PER_RUN: u64 = 64 * 1024 * 1024;
/// Bytes of copies compaction lets wait for the writer before it waits too.
const COMPACT_UNWRITTEN_BYTES: u64 = 1024 * 1024;

/// Applies one record found in the log at start-up.
fn replay(st: &mut State, pos: u64, total: u32, body: &[u8], covered: u64, now: u64) {
    let rec = match record::decode(Bytes::copy_from_slice(body)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pos, error = %e, "skipping a record this version cannot decode");
            return;
        }
    };
    // The snapshot already holds every declaration, deletion and group offset before `covered`.
    let meta_known = pos < covered;
    match rec {
        Record::Message { relocated, timestamp_ms, dispatch, msg } => {
            for (q, offset) in dispatch {
                // A compaction copy replaces the original if that is still
                // here; if the original's segment is gone, it is the original.
                if relocated && st.table.holds(q, offset) {
                    st.table.relocate(q, offset, None, pos, total);
                    continue;
                }
                let e = IndexEntry {
                    offset,
                    span: msg.span,
                    pos,
                    total,
                    timestamp_ms,
                    deliver_at_ms: msg.deliver_at_ms,
                    priority: msg.priority,
                    group: msg.group.as_deref(),
                };
                let _ = st.table.index(q, e, now);
            }
        }
        Record::Declare { id, name, opts } if !meta_known => st.table.restore_queue(id, &name, &opts, 0, now),
        Record::Delete { id } if !meta_known => {
            st.table.delete(id);
            st.forget_queue(id);
        }
        Record::Bind { space, pattern, id } if !meta_known => {
            if st.table.exists(id) {
                st.bind(&space, &Pattern::from_canonical(&pattern), id);
            }
        }
        Record::Unbind { space, pattern, id } if !meta_known => {
            st.unbind(&space, &Pattern::from_canonical(&pattern), id);
        }
        Record::Bind { .. } | Record::Unbind { .. } => {}
        Record::GroupOffset { id, group, offset } if !meta_known => {
            st.group_offsets.insert((group.into(), id), offset);
        }
        Record::GroupDelete { group } if !meta_known => st.group_offsets.retain(|(g, _), _| **g != *group),
        Record::Declare { .. } | Record::Delete { .. } | Record::GroupOffset { .. } | Record::GroupDelete { .. } => {}
        Record::Ack { id, offsets } => {
            for o in offsets {
                st.table.restore_ack(id, o, now);
            }
        }
        Record::Requeue { id, offset, deliveries, visible_at_ms } => st.table.restore_requeue(id, offset, deliveries, visible_at_ms, now),
        Record::Dispatch { src_pos, src_total, id, offset, from } => {
            if let Some((fq, fo)) = from {
                st.table.restore_ack(fq, fo, now);
            }
            // The original record precedes this one, so it is readable now
            // only through the log; the entry needs no more than its place.
            let e =
                IndexEntry { offset, span: 1, pos: src_pos, total: src_total, timestamp_ms: 0, deliver_at_ms: 0, priority: 0, group: None };
            let _ = st.table.index(id, e, now);
        }
    }
    drop(st.table.take_live());
}

#[cfg(test)]
mod group_offset_tests;

fn recount_live(st: &State) -> BTreeMap<u64, i64> {
    let mut live = BTreeMap::new();
    st.table.for_each_live_pos(|pos, total| {
        let i = st.bases.partition_point(|&b| b <= pos);
        let base = if i == 0 { 0 } else { st.bases[i - 1] };
        *live.entry(base).or_insert(0) += total as i64;
    });
    live
}
