//! The single writer: gathers every append waiting in its channel into one
//! batch, issues one vectored write, one fsync (per policy), then hands the
//! batch to the store's commit hook and completes the appenders.
//!
//! Batching is natural, not timed: while an fsync is in flight new appends
//! pile up in the channel and become the next batch, so the batch size grows
//! with load and latency stays one fsync when idle.

use std::io::{IoSlice, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::frame::{frame_prefix_known, KnownCrc, FRAME_PREFIX};
use super::segment::Segment;
use super::{open_checkpoint, write_checkpoint, FsyncPolicy, LogConfig, Shared};
use crate::limits::{WRITE_BATCH_BYTES_MAX, WRITE_BATCH_COUNT_MAX, WRITE_QUEUE_DEPTH_MAX};
use crate::StoreError;

/// One record to append: `head` and `tail` are the body, in that order (the
/// split lets a payload be written from the caller's buffer without a copy).
pub struct Submit<T> {
    pub head: Vec<u8>,
    pub tail: Bytes,
    /// The CRC-32C of a suffix of `tail` if the caller already computed it
    /// (e.g. verified a checksum the client sent): combined into the frame's
    /// checksum instead of reading those bytes again.
    pub tail_crc: Option<KnownCrc>,
    pub meta: T,
    pub done: Option<oneshot::Sender<Result<u64, StoreError>>>,
}

pub enum Msg<T> {
    Append(Submit<T>),
    /// Fsync now; the callback gets the synced position (close, flushes).
    Sync(SyncReply),
    Tick,
    Stop,
}

/// A record as written: where it starts, how many bytes it spans.
pub struct Committed<T> {
    pub pos: u64,
    pub total: u32,
    pub meta: T,
}

pub type SyncReply = Box<dyn FnOnce(Result<u64, StoreError>) + Send>;

/// The store's commit hook: runs on the writer thread after each batch.
pub type CommitHook<T> = Box<dyn FnMut(&mut [Committed<T>]) + Send>;

/// Asks the writer to fsync and waits for it, from any thread, inside an
/// async runtime or not (close() runs from Drop, which can be either).
pub fn sync_blocking<T>(tx: &mpsc::Sender<Msg<T>>) -> Result<u64, StoreError> {
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    let mut msg = Msg::Sync(Box::new(move |r| {
        let _ = reply_tx.send(r);
    }));
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(mpsc::error::TrySendError::Full(m)) => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Closed),
        }
    }
    reply_rx.recv().map_err(|_| StoreError::Closed)?
}

/// Sends without blocking a runtime thread's async machinery (see sync_blocking).
fn send_anywhere<T>(tx: &mpsc::Sender<Msg<T>>, mut msg: Msg<T>) -> bool {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(m)) => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
}

pub struct WriterHandle<T> {
    pub(super) tx: mpsc::Sender<Msg<T>>,
    thread: Option<JoinHandle<()>>,
    ticker: Option<JoinHandle<()>>,
    stop_ticker: Arc<std::sync::atomic::AtomicBool>,
}

impl<T: Send + 'static> WriterHandle<T> {
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stop_ticker.store(true, Ordering::Release);
        let synced = sync_blocking(&self.tx);
        let _ = send_anywhere(&self.tx, Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        match synced {
            Ok(_) | Err(StoreError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub(super) fn spawn<T: Send + 'static>(
    shared: Arc<Shared>,
    cfg: LogConfig,
    on_commit: CommitHook<T>,
) -> Result<WriterHandle<T>, StoreError> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH_MAX);
    let active = {
        let segs = shared.segments.read().map_err(|_| StoreError::Poisoned)?;
        segs.values().next_back().cloned().ok_or(StoreError::Closed)?
    };
    let stop_ticker = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = match cfg.fsync {
        FsyncPolicy::Interval(every) => {
            let tx = tx.clone();
            let stop = stop_ticker.clone();
            Some(
                std::thread::Builder::new()
                    .name("polymq-log-tick".into())
                    .spawn(move || {
                        // Sleeps in short slices so close() never waits a whole interval.
                        let slice = every.min(Duration::from_millis(20));
                        let mut next = Instant::now() + every;
                        while !stop.load(Ordering::Acquire) {
                            std::thread::sleep(slice);
                            if Instant::now() >= next {
                                next = Instant::now() + every;
                                if tx.try_send(Msg::Tick).is_err() && tx.is_closed() {
                                    break;
                                }
                            }
                        }
                    })
                    .map_err(|e| StoreError::io(&cfg.dir, e))?,
            )
        }
        _ => None,
    };
    let checkpoint = open_checkpoint(&cfg.dir).map_err(|e| StoreError::io(cfg.dir.join("synced.checkpoint"), e))?;
    // Recovery fsynced what it found, so the whole log is synced now.
    write_checkpoint(&checkpoint, shared.synced_end.load(Ordering::Acquire), true)
        .map_err(|e| StoreError::io(cfg.dir.join("synced.checkpoint"), e))?;
    let checkpoint = Arc::new(std::sync::Mutex::new(checkpoint));
    // Under `interval`, fsyncs run on their own thread so appends never queue
    // behind one: the writer hands over (segment, end) and keeps writing.
    let (syncer, syncer_thread) = match cfg.fsync {
        // `never` uses it only for sealed segments at a roll.
        FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
            let (tx, rx) = std::sync::mpsc::channel::<(Arc<Segment>, u64)>();
            let shared = shared.clone();
            let checkpoint = checkpoint.clone();
            let h = std::thread::Builder::new()
                .name("polymq-log-sync".into())
                .spawn(move || background_sync(rx, shared, checkpoint))
                .map_err(|e| StoreError::io(&cfg.dir, e))?;
            (Some(tx), Some(h))
        }
        _ => (None, None),
    };
    let mut w = Writer {
        shared,
        cfg,
        active,
        on_commit,
        buf: Vec::with_capacity(WRITE_BATCH_BYTES_MAX + 64 * 1024),
        dirty: false,
        checkpoint,
        syncer,
        sealed_unsynced: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("polymq-log-writer".into())
        .spawn(move || {
            w.run(rx);
            // Dropping the writer closes the syncer's channel; wait for it.
            drop(w);
            if let Some(h) = syncer_thread {
                let _ = h.join();
            }
        })
        .map_err(|e| StoreError::io("polymq-log-writer", e))?;
    Ok(WriterHandle { tx, thread: Some(thread), ticker, stop_ticker })
}

struct Writer<T> {
    shared: Arc<Shared>,
    cfg: LogConfig,
    active: Arc<Segment>,
    on_commit: CommitHook<T>,
    /// Reused for every batch: frame prefixes, heads and small tails.
    buf: Vec<u8>,
    /// Written but not yet fsynced.
    dirty: bool,
    /// Where the last fsynced position is hinted for recovery.
    checkpoint: Arc<std::sync::Mutex<std::fs::File>>,
    /// The background fsync thread (interval and never policies).
    syncer: Option<std::sync::mpsc::Sender<(Arc<Segment>, u64)>>,
    /// Segments sealed at a roll whose fsync was left to the syncer: an
    /// explicit sync covers them too before it names everything synced.
    sealed_unsynced: Vec<Arc<Segment>>,
}

/// Payloads at least this big are written from the caller's buffer; smaller
/// ones are cheaper to copy than to describe with another iovec.
const ZERO_COPY_MIN: usize = 64 * 1024;

impl<T: Send + 'static> Writer<T> {
    fn run(&mut self, mut rx: mpsc::Receiver<Msg<T>>) {
        let mut batch: Vec<Submit<T>> = Vec::with_capacity(WRITE_BATCH_COUNT_MAX);
        let mut syncs: Vec<SyncReply> = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else { break };
            let mut stop = false;
            let mut tick = false;
            let mut bytes = 0usize;
            let mut take = |m: Msg<T>, batch: &mut Vec<Submit<T>>, syncs: &mut Vec<_>, bytes: &mut usize| match m {
                Msg::Append(s) => {
                    *bytes += s.head.len() + s.tail.len() + FRAME_PREFIX;
                    batch.push(s);
                }
                Msg::Sync(tx) => syncs.push(tx),
                Msg::Tick => tick = true,
                Msg::Stop => stop = true,
            };
            take(first, &mut batch, &mut syncs, &mut bytes);
            while batch.len() < WRITE_BATCH_COUNT_MAX && bytes < WRITE_BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut syncs, &mut bytes),
                    Err(_) => break,
                }
            }
            let explicit_sync = !syncs.is_empty() || stop;
            let result = self.write_batch(&mut batch, explicit_sync);
            if tick && result.is_ok() && self.dirty {
                if let Some(syncer) = &self.syncer {
                    let end = self.shared.written_end.load(Ordering::Acquire);
                    if syncer.send((self.active.clone(), end)).is_ok() {
                        self.dirty = false;
                    }
                }
            }
            for tx in syncs.drain(..) {
                let r = match &result {
                    Ok(()) => Ok(self.shared.synced_end.load(Ordering::Acquire)),
                    Err(StoreError::NoSpace) => Err(StoreError::NoSpace),
                    Err(_) => Err(StoreError::Poisoned),
                };
                tx(r);
            }
            if stop {
                break;
            }
        }
        // Best effort: a final checkpoint lets the next start tell torn from corrupt precisely.
        if !self.shared.poisoned.load(Ordering::Acquire) {
            if let Ok(f) = self.checkpoint.lock() {
                let _ = write_checkpoint(&f, self.shared.synced_end.load(Ordering::Acquire), true);
            }
        }
    }

    /// Writes the batch (rolling segments as needed), fsyncs per policy, runs
    /// the commit hook and completes every appender.
    fn write_batch(&mut self, batch: &mut Vec<Submit<T>>, explicit_sync: bool) -> Result<(), StoreError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            for s in batch.drain(..) {
                if let Some(done) = s.done {
                    let _ = done.send(Err(StoreError::Poisoned));
                }
            }
            return Err(StoreError::Poisoned);
        }
        let mut committed: Vec<Committed<T>> = Vec::with_capacity(batch.len());
        let mut dones: Vec<Option<oneshot::Sender<Result<u64, StoreError>>>> = Vec::with_capacity(batch.len());
        let mut flushed = 0usize;
        let written = self.write_records(batch, &mut committed, &mut dones, &mut flushed);
        if let Err(StoreError::NoSpace) = written {
            return self.refuse_for_space(committed, dones, flushed);
        }
        let outcome = written.and_then(|()| {
            let sync_now = match self.cfg.fsync {
                FsyncPolicy::Always => self.dirty,
                // An explicit request (close, flush) must cover everything
                // written, including what a background sync may still be on.
                FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                    explicit_sync
                        && (self.dirty || self.shared.synced_end.load(Ordering::Acquire) < self.shared.written_end.load(Ordering::Acquire))
                }
            };
            if sync_now {
                self.sync()
            } else {
                Ok(())
            }
        });
        match outcome {
            Ok(()) => {
                if !committed.is_empty() {
                    (self.on_commit)(&mut committed);
                }
                for (c, done) in committed.iter().zip(dones) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(c.pos));
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "log write failed; the store is now poisoned and refuses appends");
                self.shared.poisoned.store(true, Ordering::Release);
                for done in dones.into_iter().flatten() {
                    let _ = done.send(Err(StoreError::Poisoned));
                }
                Err(e)
            }
        }
    }

    /// The disk refuses writes: a write or a segment roll failed with
    /// ENOSPC, EDQUOT or EROFS. The records of the batch written before that (`flushed`,
    /// only ever the part before a roll) are kept and acknowledged; the
    /// partly written rest is cut off the active segment, and its appenders
    /// get [`StoreError::NoSpace`]. The store stays open: appends succeed
    /// again once space returns. If the cut itself fails, the file's state
    /// is unknown and the store is poisoned as for any other write error.
    fn refuse_for_space(
        &mut self,
        mut committed: Vec<Committed<T>>,
        mut dones: Vec<Option<oneshot::Sender<Result<u64, StoreError>>>>,
        flushed: usize,
    ) -> Result<(), StoreError> {
        let end = self.shared.written_end.load(Ordering::Acquire);
        // A read-only filesystem wrote nothing, and cannot be cut either.
        let written = self.active.file.metadata().map(|m| m.len());
        let cut = match written {
            Ok(len) if len == end - self.active.base => Ok(()),
            _ => self.active.file.set_len(end - self.active.base),
        };
        if let Err(e) = cut {
            tracing::error!(error = %e, "cutting a partial write off the log failed; the store is now poisoned and refuses appends");
            self.shared.poisoned.store(true, Ordering::Release);
            for done in dones.into_iter().flatten() {
                let _ = done.send(Err(StoreError::Poisoned));
            }
            return Err(StoreError::Poisoned);
        }
        let refused = dones.split_off(flushed.min(dones.len()));
        committed.truncate(flushed);
        if !committed.is_empty() {
            (self.on_commit)(&mut committed);
        }
        for (c, done) in committed.iter().zip(dones) {
            if let Some(done) = done {
                let _ = done.send(Ok(c.pos));
            }
        }
        tracing::warn!(refused = refused.len(), "no space left for the log: appends refused until space returns");
        self.shared.counters.refused_no_space.fetch_add(refused.len() as u64, Ordering::Relaxed);
        for done in refused.into_iter().flatten() {
            let _ = done.send(Err(StoreError::NoSpace));
        }
        Err(StoreError::NoSpace)
    }

    /// Writes the batch; `flushed` counts the records known written (all of
    /// them on success; on failure those before the failed write).
    fn write_records(
        &mut self,
        batch: &mut Vec<Submit<T>>,
        committed: &mut Vec<Committed<T>>,
        dones: &mut Vec<Option<oneshot::Sender<Result<u64, StoreError>>>>,
        flushed: &mut usize,
    ) -> Result<(), StoreError> {
        self.buf.clear();
        // (offset in buf where a zero-copy tail goes, the tail)
        let mut tails: Vec<(usize, Bytes)> = Vec::new();
        let mut pos = self.shared.written_end.load(Ordering::Acquire);
        let mut pending_bytes = 0u64;
        for s in batch.drain(..) {
            let total = (FRAME_PREFIX + s.head.len() + s.tail.len()) as u64;
            let seg_len = pos - self.active.base;
            if seg_len + total > self.cfg.segment_bytes && seg_len > super::segment::HEADER_BYTES {
                self.flush(&mut tails, pos)?;
                *flushed = committed.len();
                pending_bytes = 0;
                self.roll(pos)?;
                pos += super::segment::HEADER_BYTES;
            }
            let prefix = frame_prefix_known(&s.head, &s.tail, s.tail_crc);
            self.buf.extend_from_slice(&prefix);
            self.buf.extend_from_slice(&s.head);
            if s.tail.len() >= ZERO_COPY_MIN {
                tails.push((self.buf.len(), s.tail));
            } else {
                self.buf.extend_from_slice(&s.tail);
            }
            committed.push(Committed { pos, total: total as u32, meta: s.meta });
            dones.push(s.done);
            pos += total;
            pending_bytes += total;
        }
        if pending_bytes > 0 {
            self.flush(&mut tails, pos)?;
        }
        *flushed = committed.len();
        let c = &self.shared.counters;
        c.appends.fetch_add(committed.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One vectored write of `buf` interleaved with the zero-copy tails.
    fn flush(&mut self, tails: &mut Vec<(usize, Bytes)>, end: u64) -> Result<(), StoreError> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(tails.len() * 2 + 1);
        let mut at = 0usize;
        for (split, tail) in tails.iter() {
            slices.push(IoSlice::new(&self.buf[at..*split]));
            slices.push(IoSlice::new(tail));
            at = *split;
        }
        slices.push(IoSlice::new(&self.buf[at..]));
        // Empty slices would make a finished write look like a short one.
        slices.retain(|s| !s.is_empty());
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Ok(());
        }
        write_all_vectored(&self.active.file, &mut slices).map_err(|e| {
            let err = StoreError::io(&self.active.path, e);
            if err.is_write_refused() {
                StoreError::NoSpace
            } else {
                err
            }
        })?;
        self.shared.counters.append_bytes.fetch_add(total as u64, Ordering::Relaxed);
        self.shared.written_end.store(end, Ordering::Release);
        self.dirty = true;
        drop(slices);
        tails.clear();
        self.buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let end = self.shared.written_end.load(Ordering::Acquire);
        for seg in self.sealed_unsynced.drain(..) {
            seg.file.sync_data().map_err(|e| StoreError::io(&seg.path, e))?;
        }
        self.active.file.sync_data().map_err(|e| StoreError::io(&self.active.path, e))?;
        self.dirty = false;
        mark_synced(&self.shared, &self.checkpoint, end);
        Ok(())
    }

    /// Seals the active segment (fsynced, so only the last segment can ever
    /// hold a torn tail) and starts a new one at `pos`.
    ///
    /// Under `always` the sealed segment is fsynced here (its acks wait for
    /// it). Under `interval`/`never` its fsync goes to the syncer so appends
    /// do not stall behind a segment's worth of writeback; recovery accepts a
    /// torn tail in a sealed segment only past the fsynced position.
    fn roll(&mut self, pos: u64) -> Result<(), StoreError> {
        let handed_off = match (&self.syncer, self.cfg.fsync) {
            (Some(syncer), FsyncPolicy::Interval(_) | FsyncPolicy::Never) if self.dirty => {
                let sent = syncer.send((self.active.clone(), pos)).is_ok();
                if sent {
                    self.sealed_unsynced.push(self.active.clone());
                    self.dirty = false;
                }
                sent
            }
            _ => false,
        };
        if self.dirty && !handed_off {
            self.sync()?;
        }
        let seg = Arc::new(Segment::create(&self.shared.dir, pos)?);
        let header_end = pos + super::segment::HEADER_BYTES;
        self.shared.segments.write().map_err(|_| StoreError::Poisoned)?.insert(pos, seg.clone());
        self.shared.segments_version.fetch_add(1, Ordering::AcqRel);
        self.active = seg;
        self.shared.written_end.store(header_end, Ordering::Release);
        if self.sealed_unsynced.is_empty() {
            // Everything before the new segment is synced and its header was
            // fsynced when it was created.
            self.shared.synced_end.fetch_max(header_end, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// Records that everything before `end` is on stable storage. Two threads
/// sync (the writer at rolls and on request, the syncer on ticks), so the
/// position only moves forward and the checkpoint names the maximum.
fn mark_synced(shared: &Shared, checkpoint: &std::sync::Mutex<std::fs::File>, end: u64) {
    shared.synced_end.fetch_max(end, Ordering::AcqRel);
    shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    if let Ok(f) = checkpoint.lock() {
        // A hint only, so no fsync of its own: after a power loss it may be
        // older than the data, which only widens what counts as torn.
        let _ = write_checkpoint(&f, shared.synced_end.load(Ordering::Acquire), false);
    }
}

/// The interval policy's fsync thread: syncs the newest (segment, end) it
/// was handed. An older segment needs nothing: the writer synced it when it
/// rolled. A failed fsync poisons the log like a failed write.
fn background_sync(
    rx: std::sync::mpsc::Receiver<(Arc<Segment>, u64)>,
    shared: Arc<Shared>,
    checkpoint: Arc<std::sync::Mutex<std::fs::File>>,
) {
    while let Ok(first) = rx.recv() {
        // In order, one fsync per segment: a sealed segment must be synced
        // before the position can move past it into the next one.
        let mut jobs: Vec<(Arc<Segment>, u64)> = vec![first];
        while let Ok(next) = rx.try_recv() {
            match jobs.last_mut() {
                Some(last) if last.0.base == next.0.base => last.1 = last.1.max(next.1),
                _ => jobs.push(next),
            }
        }
        for (seg, end) in jobs {
            match seg.file.sync_data() {
                Ok(()) => mark_synced(&shared, &checkpoint, end),
                Err(e) => {
                    tracing::error!(error = %e, file = %seg.path.display(), "background fsync failed; the store is now poisoned and refuses appends");
                    shared.poisoned.store(true, Ordering::Release);
                    break;
                }
            }
        }
    }
}

fn write_all_vectored(mut file: &std::fs::File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    // IOV_MAX is 1024 on Linux; write in chunks of at most that many slices.
    while !slices.is_empty() {
        let n = slices.len().min(1024);
        match file.write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write")),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
