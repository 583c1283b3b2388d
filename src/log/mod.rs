//! The commit log: append-only segments, group commit by one writer thread,
//! recovery that absorbs a torn tail and refuses interior corruption.
//!
//! Positions are global byte positions: a segment named `B` holds positions
//! `B..B+len`. Every message, ack and metadata change of the store is one
//! record in this log; the log itself gives records no meaning.

pub mod frame;
pub mod segment;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::limits;
use crate::StoreError;
use frame::{FrameRead, FRAME_PREFIX};
use segment::{Segment, HEADER_BYTES};
pub use writer::{CommitHook, Committed, Submit, WriterHandle};

/// When the log fsyncs, and so when an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync every group-commit batch; an append completes after its fsync.
    Always,
    /// fsync at most this often; an append completes after its write.
    Interval(Duration),
    /// Leave it to the OS; an append completes after its write.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(50))
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;
    /// `always`, `never`, `interval=<ms>` (also `interval` alone: 50 ms).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::default()),
            other => match other.strip_prefix("interval=") {
                Some(ms) => {
                    let ms: u64 = ms.trim_end_matches("ms").parse().map_err(|_| format!("bad fsync interval: {other}"))?;
                    if ms == 0 {
                        return Err("fsync interval must be > 0 ms (use `always`)".into());
                    }
                    Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
                }
                None => Err(format!("fsync policy must be always, never or interval=<ms>, got {other:?}")),
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
}

/// Counters the writer and readers keep; read for /metrics and benchmarks.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub appends: AtomicU64,
    pub append_bytes: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Appends refused because the disk was full.
    pub refused_no_space: AtomicU64,
}

/// State shared by the writer thread and readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// End of the bytes handed to the kernel.
    pub written_end: AtomicU64,
    /// End of the bytes known to be on stable storage.
    pub synced_end: AtomicU64,
    /// Set after a failed write or fsync: after fsync fails the page cache
    /// may hold data the disk lost, so nothing more may be acknowledged.
    pub poisoned: AtomicBool,
    pub counters: LogCounters,
    /// Bumped whenever a segment is added or removed, so readers of the
    /// segment list know when their copy is stale without taking the lock.
    pub segments_version: AtomicU64,
}

/// Where the last known fsynced position is hinted, so recovery can tell a
/// torn unsynced tail (absorbed) from damage to synced data (refused).
const CHECKPOINT_FILE: &str = "synced.checkpoint";

pub struct Log<T: Send + 'static> {
    shared: Arc<Shared>,
    cfg: LogConfig,
    writer: Mutex<Option<WriterHandle<T>>>,
}

/// What recovery did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub end: u64,
    /// Bytes cut from the tail of the last segment (a torn write), if any.
    pub truncated_bytes: u64,
}

impl<T: Send + 'static> Log<T> {
    /// Opens the log in `cfg.dir`, validating every record and calling `visit`
    /// with each valid record's position and body, in order. A torn tail of
    /// the last segment (bytes past the last fsync that fail their checksum)
    /// is truncated; any other damage is an error naming file and offset.
    pub fn open(
        cfg: LogConfig,
        mut visit: impl FnMut(u64, u32, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(Log<T>, RecoveryReport), StoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| StoreError::io(&cfg.dir, e))?;
        let mut bases: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(&cfg.dir).map_err(|e| StoreError::io(&cfg.dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&cfg.dir, e))?;
            if let Some(base) = entry.file_name().to_str().and_then(segment::parse_file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let synced_hint = read_checkpoint(&cfg.dir);
        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        let mut expect_base: Option<u64> = None;
        let count = bases.len();
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == count;
            let path = cfg.dir.join(segment::file_name(base));
            if let Some(expect) = expect_base {
                if base != expect {
                    return Err(StoreError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("gap in the log: expected a segment starting at {expect}"),
                    });
                }
            }
            let buf = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            let unsynced = synced_hint.is_none_or(|synced| synced <= base);
            if is_last && (buf.len() as u64) < HEADER_BYTES && (count > 1 || base == 0) && unsynced {
                // Crash while creating a segment (the next one, or the very
                // first): its header never became durable and nothing was
                // acknowledged in it. With synced records claimed past its
                // base, the short file is damage instead: check_header refuses.
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                report.truncated_bytes += buf.len() as u64;
                break;
            }
            segment::check_header(&path, &buf, base)?;
            let mut off = HEADER_BYTES as usize;
            let mut cut: Option<usize> = None;
            while off < buf.len() {
                match frame::read_frame(&buf[off..]) {
                    FrameRead::Record { body, total } => {
                        visit(base + off as u64, total as u32, body)?;
                        report.records += 1;
                        off += total;
                    }
                    bad => {
                        let reason = match bad {
                            FrameRead::Invalid(r) => r,
                            _ => "record cut short",
                        };
                        let pos = base + off as u64;
                        // Past the last fsync a bad record is a write the crash
                        // cut short. The writer writes the hint at every start
                        // and fsync, so a missing one means outside damage: then
                        // it is torn only if nothing valid follows it.
                        // A sealed segment can be torn too: under interval/never
                        // its fsync runs in the background after the roll.
                        let torn = match synced_hint {
                            Some(synced) => pos >= synced,
                            None => is_last && !valid_record_after(&buf, off + 1),
                        };
                        if !torn {
                            return Err(StoreError::Corrupt { path, offset: off as u64, reason: reason.to_owned() });
                        }
                        cut = Some(off);
                        break;
                    }
                }
            }
            let seg = Segment::open(path.clone(), base)?;
            if let Some(cut) = cut {
                tracing::warn!(file = %path.display(), offset = cut, bytes = buf.len() - cut, "truncating torn tail of the log");
                seg.file.set_len(cut as u64).map_err(|e| StoreError::io(&path, e))?;
                seg.file.sync_all().map_err(|e| StoreError::io(&path, e))?;
                report.truncated_bytes += (buf.len() - cut) as u64;
                off = cut;
            }
            expect_base = Some(base + off as u64);
            segments.insert(base, Arc::new(seg));
            if cut.is_some() && !is_last {
                // Everything after a torn sealed segment lies past the fsynced
                // position too: unsynced writes the crash lost, never
                // promised durable. Keeping them would leave a hole in the log.
                for &later in &bases[i + 1..] {
                    let p = cfg.dir.join(segment::file_name(later));
                    report.truncated_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    tracing::warn!(file = %p.display(), "removing a segment written after a torn, unsynced one");
                    std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
                }
                segment::sync_dir(&cfg.dir)?;
                break;
            }
        }
        if let (Some(synced), Some(end)) = (synced_hint, expect_base) {
            if end < synced {
                // Records that were fsynced are missing from the end of the
                // log (a cut file, a deleted segment). A crash cannot do
                // this: the hint is only written after the fsync it names.
                let (base, seg) = segments.iter().next_back().map(|(b, s)| (*b, s.path.clone())).unwrap_or((0, cfg.dir.clone()));
                return Err(StoreError::Corrupt {
                    path: seg,
                    offset: end - base,
                    reason: format!("the log ends at position {end} but data up to {synced} was fsynced; a segment was cut or removed"),
                });
            }
        }
        if segments.is_empty() {
            segments.insert(0, Arc::new(Segment::create(&cfg.dir, 0)?));
            expect_base = Some(HEADER_BYTES);
        }
        // What survived a crash may still be only in the page cache: make it
        // durable before the writer names it synced.
        if let Some(last) = segments.values().next_back() {
            last.file.sync_all().map_err(|e| StoreError::io(&last.path, e))?;
        }
        let end = expect_base.unwrap_or(HEADER_BYTES);
        report.segments = segments.len();
        report.end = end;
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            segments: RwLock::new(segments),
            written_end: AtomicU64::new(end),
            synced_end: AtomicU64::new(end),
            poisoned: AtomicBool::new(false),
            counters: LogCounters::default(),
            segments_version: AtomicU64::new(0),
        });
        Ok((Log { shared, cfg, writer: Mutex::new(None) }, report))
    }

    /// Starts the writer thread. `on_commit` runs on that thread after each
    /// batch is written (and fsynced, under `always`), in log order, before
    /// the appenders are told: it is where the store makes records visible.
    pub fn start(&self, on_commit: CommitHook<T>) -> Result<(), StoreError> {
        let mut w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        if w.is_none() {
            *w = Some(writer::spawn(self.shared.clone(), self.cfg.clone(), on_commit)?);
        }
        Ok(())
    }

    /// A sender for appends; cheap to clone. Fails once the log is closed.
    pub fn sender(&self) -> Result<tokio::sync::mpsc::Sender<writer::Msg<T>>, StoreError> {
        let w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        w.as_ref().map(|w| w.tx.clone()).ok_or(StoreError::Closed)
    }

    /// Flushes, fsyncs, stops the writer and writes the checkpoint. Idempotent.
    pub fn close(&self) -> Result<(), StoreError> {
        let handle = self.writer.lock().map_err(|_| StoreError::Poisoned)?.take();
        if let Some(h) = handle {
            h.shutdown()?;
        }
        Ok(())
    }

    /// Reads the body of the record at `pos` spanning `total` bytes, checking its CRC.
    pub fn read(&self, pos: u64, total: u32) -> Result<Bytes, StoreError> {
        let seg = self.segment_for(pos)?;
        let mut buf = vec![0u8; total as usize];
        seg.read_exact_at(pos, &mut buf)?;
        match frame::read_frame(&buf) {
            FrameRead::Record { total: t, .. } if t == buf.len() => {
                let mut b = Bytes::from(buf);
                Ok(b.split_off(FRAME_PREFIX))
            }
            FrameRead::Record { .. } => Err(StoreError::Corrupt {
                path: seg.path.clone(),
                offset: pos - seg.base,
                reason: "record length differs from the index".into(),
            }),
            FrameRead::Truncated => {
                Err(StoreError::Corrupt { path: seg.path.clone(), offset: pos - seg.base, reason: "record cut short".into() })
            }
            FrameRead::Invalid(r) => Err(StoreError::Corrupt { path: seg.path.clone(), offset: pos - seg.base, reason: r.into() }),
        }
    }

    fn segment_for(&self, pos: u64) -> Result<Arc<Segment>, StoreError> {
        let segs = self.shared.segments.read().map_err(|_| StoreError::Poisoned)?;
        segs.range(..=pos)
            .next_back()
            .map(|(_, s)| s.clone())
            .ok_or_else(|| StoreError::InvalidArgument(format!("position {pos} is before the log start")))
    }

    /// Changes whenever the segment list does.
    pub fn segments_version(&self) -> u64 {
        self.shared.segments_version.load(Ordering::Acquire)
    }

    /// Base positions of all segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.shared.segments.read().map(|s| s.keys().copied().collect()).unwrap_or_default()
    }

    /// Deletes whole segments that end at or before `pos`, never the active
    /// one. The caller guarantees nothing live remains below `pos`.
    pub fn delete_segments_before(&self, pos: u64) -> Result<u64, StoreError> {
        let doomed: Vec<Arc<Segment>> = {
            let mut segs = self.shared.segments.write().map_err(|_| StoreError::Poisoned)?;
            let bases: Vec<u64> = segs.keys().copied().collect();
            let mut out = Vec::new();
            for w in bases.windows(2) {
                // A segment ends where the next begins.
                if w[1] <= pos {
                    if let Some(s) = segs.remove(&w[0]) {
                        out.push(s);
                    }
                }
            }
            out
        };
        if !doomed.is_empty() {
            self.shared.segments_version.fetch_add(1, Ordering::AcqRel);
        }
        let mut freed = 0;
        for s in &doomed {
            freed += s.file.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&s.path).map_err(|e| StoreError::io(&s.path, e))?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.shared.dir)?;
        }
        Ok(freed)
    }

    pub fn start_position(&self) -> u64 {
        self.shared.segments.read().ok().and_then(|s| s.keys().next().copied()).unwrap_or(0)
    }
    pub fn end_position(&self) -> u64 {
        self.shared.written_end.load(Ordering::Acquire)
    }
    pub fn synced_position(&self) -> u64 {
        self.shared.synced_end.load(Ordering::Acquire)
    }
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }
    pub fn counters(&self) -> &LogCounters {
        &self.shared.counters
    }
    /// Bytes on disk across all segments.
    pub fn disk_bytes(&self) -> u64 {
        let start = self.start_position();
        let segs = self.shared.segments.read().map(|s| s.len() as u64).unwrap_or(0);
        self.end_position().saturating_sub(start).max(segs * HEADER_BYTES)
    }
    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().map(|s| s.len()).unwrap_or(0)
    }
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

impl<T: Send + 'static> Drop for Log<T> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn valid_record_after(buf: &[u8], from: usize) -> bool {
    (from..buf.len().saturating_sub(FRAME_PREFIX)).any(|p| matches!(frame::read_frame(&buf[p..]), FrameRead::Record { .. }))
}

/// The checkpoint is a hint: `[u64 synced position][u32 crc]`, rewritten in
/// place after every fsync. A stale one only widens what counts as a torn
/// tail; a missing or damaged one falls back to "torn only if nothing valid
/// follows".
fn read_checkpoint(dir: &Path) -> Option<u64> {
    let b = std::fs::read(dir.join(CHECKPOINT_FILE)).ok()?;
    if b.len() != 12 {
        return None;
    }
    let crc = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if crc32c::crc32c(&b[..8]) != crc {
        return None;
    }
    let mut p = [0u8; 8];
    p.copy_from_slice(&b[..8]);
    Some(u64::from_le_bytes(p))
}

pub(crate) fn open_checkpoint(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(CHECKPOINT_FILE))
}

/// One 12-byte `pwrite` at offset 0: within one sector, so it lands whole
/// or not at all in practice, and the CRC catches the rest.
pub(crate) fn write_checkpoint(file: &std::fs::File, synced: u64, durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&synced.to_le_bytes());
    let crc = crc32c::crc32c(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&b, 0)?;
    file.set_len(12)?;
    if durable {
        file.sync_all()?;
    }
    Ok(())
}

pub(crate) const _ASSERT: () = assert!(limits::SEGMENT_BYTES_MIN > HEADER_BYTES);
