//! Recovery from damaged log files: real segments written by a real store,
//! then bytes flipped, cut, appended or deleted on disk, then a real reopen.
//!
//! The contract under test (docs/DURABILITY.md): a torn tail of the last
//! segment (at or after the last fsynced position, or with no hint, nothing
//! valid after it) is truncated and nothing else is lost; any other damage
//! makes `Store::open` refuse with an error naming the file and byte offset,
//! and a refused open changes no file.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polymq::queue::QueueOptions;
use polymq::record::Message;
use polymq::{FsyncPolicy, Store, StoreConfig, StoreError};
use proptest::prelude::*;

/// The smallest segment the store accepts, so a few hundred small messages
/// already span several segments (sealed ones and a last one).
const SEGMENT_BYTES: u64 = 64 * 1024;
const HEADER_BYTES: usize = 32;
const STREAM: &str = "s";

fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.fsync = FsyncPolicy::Always;
    c.segment_bytes = SEGMENT_BYTES;
    c.maintenance_interval = Duration::ZERO;
    c
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
    Store::open(cfg(dir))
}

/// A payload that names its own index and length, with a body that depends on
/// the index, so a message read back can be checked to be exactly the one written.
fn payload(i: usize, len: usize) -> Bytes {
    let mut p = format!("m{i:06}:{len}:").into_bytes();
    p.extend((0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8));
    Bytes::from(p)
}

/// A message as appended: what it holds and where its record starts.
#[derive(Debug, Clone)]
struct Written {
    payload: Bytes,
    pos: u64,
}

/// Writes `sizes.len()` messages into stream `s` of a fresh store in `dir`,
/// closes it cleanly (so the checkpoint says everything is synced) and
/// returns what was acknowledged. Appends are submitted together and awaited
/// after, so group commit keeps the number of fsyncs small.
fn populate(dir: &Path, sizes: &[usize]) -> Vec<Written> {
    let store = open(dir).expect("open a fresh store");
    let written = block_on(async {
        let s = store.declare_queue(STREAM, QueueOptions::stream()).await.expect("declare").id;
        let mut tickets = Vec::with_capacity(sizes.len());
        for (i, &len) in sizes.iter().enumerate() {
            let p = payload(i, len);
            tickets.push((p.clone(), store.submit(Message::new(p), &[s]).await.expect("submit")));
        }
        let mut out = Vec::with_capacity(tickets.len());
        for (i, (p, t)) in tickets.into_iter().enumerate() {
            let a = t.wait().await.expect("append acknowledged");
            assert_eq!(a.offsets, vec![(s, i as u64)], "offsets follow submit order");
            out.push(Written { payload: p, pos: a.pos });
        }
        out
    });
    store.close().expect("clean close");
    written
}

/// Sizes 1..1500 in a fixed pseudo-random order: ~220 KB, four segments.
fn default_sizes() -> Vec<usize> {
    (0..300).map(|i| (i * 7919 + 13) % 1500 + 1).collect()
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn checkpoint(dir: &Path) -> PathBuf {
    log_dir(dir).join("synced.checkpoint")
}

fn seg_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Segment bases on disk, oldest first.
fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(log_dir(dir))
        .expect("read log dir")
        .filter_map(|e| {
            let name = e.expect("dir entry").file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    log_dir(dir).join(seg_name(base))
}

/// The segment holding global position `pos`.
fn base_of(dir: &Path, pos: u64) -> u64 {
    segment_bases(dir).into_iter().filter(|&b| b <= pos).max().expect("a segment at or before pos")
}

/// Total bytes of the record starting at `pos`, read from its frame's length field.
fn record_total(dir: &Path, pos: u64) -> u64 {
    let base = base_of(dir, pos);
    let buf = std::fs::read(seg_path(dir, base)).expect("read segment");
    let off = (pos - base) as usize;
    4 + u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as u64
}

fn xor_byte(path: &Path, offset: u64, mask: u8) {
    let mut buf = std::fs::read(path).expect("read");
    buf[offset as usize] ^= mask;
    std::fs::write(path, buf).expect("write");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open for append");
    f.write_all(bytes).expect("append");
}

fn write_checkpoint(dir: &Path, synced: u64) {
    let mut b = synced.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
    std::fs::write(checkpoint(dir), b).expect("write checkpoint");
}

/// Every file under the data dir with its bytes, to prove a refusal touched nothing.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(p).expect("read dir") {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Opens, expects a refusal, and checks that not one file was created,
/// deleted or changed by the attempt. Returns the error for the caller to judge.
fn expect_refused(dir: &Path) -> StoreError {
    let before = files(dir);
    let err = match open(dir) {
        Ok(s) => {
            let recovery = s.recovery().clone();
            drop(s);
            let after = files(dir);
            let touched: Vec<String> = before
                .iter()
                .filter(|(p, b)| after.get(*p) != Some(*b))
                .map(|(p, b)| format!("{} ({} bytes -> {:?})", p.display(), b.len(), after.get(p).map(Vec::len)))
                .collect();
            panic!("the store opened over damaged data (recovery: {recovery:?}); files deleted or changed: {touched:?}");
        }
        Err(e) => e,
    };
    let after = files(dir);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "a refused open created or deleted files ({err})");
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "a refused open modified {} ({err})", path.display());
    }
    err
}

/// Asserts the error is `Corrupt` for exactly this file and record offset,
/// and that what an operator reads names both.
fn assert_corrupt_at(err: &StoreError, file: &Path, offset: u64) {
    let shown = err.to_string();
    match err {
        StoreError::Corrupt { path, offset: o, .. } => {
            assert_eq!(path, file, "wrong file blamed: {shown}");
            assert_eq!(*o, offset, "wrong offset blamed: {shown}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let name = file.file_name().and_then(|n| n.to_str()).expect("file name");
    assert!(shown.contains(name), "the error does not name the file {name}: {shown}");
    assert!(shown.contains(&format!(" {offset}")), "the error does not name byte offset {offset}: {shown}");
}

/// Every message in stream `s`, in offset order, with its offset.
fn read_stream(store: &Store) -> Vec<(u64, Bytes)> {
    let Some(s) = store.queue_id(STREAM) else { return Vec::new() };
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let r = store.read(s, from, 1000, u64::MAX).expect("read stream");
        if r.messages.is_empty() {
            return out;
        }
        for m in r.messages {
            from = m.offset + 1;
            out.push((m.offset, m.message.payload));
        }
    }
}

/// The store holds exactly `expect`, at offsets 0.., unaltered and in order.
fn assert_holds(store: &Store, expect: &[Written]) {
    let got = read_stream(store);
    let want: Vec<(u64, Bytes)> = expect.iter().enumerate().map(|(i, w)| (i as u64, w.payload.clone())).collect();
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("stream holds {} messages, expected {}; first difference at index {first_diff}", got.len(), want.len());
    }
}

/// After a truncating recovery the store must take new appends, at the next
/// offsets, and keep them (and everything older) across another restart.
fn assert_appends_survive_restart(dir: &Path, kept: &[Written]) {
    let store = open(dir).expect("reopen");
    let extra = payload(999_999, 10);
    let a = block_on(async {
        let s = store.queue_id(STREAM).expect("stream exists");
        store.append(Message::new(extra.clone()), &[s]).await.expect("append after recovery")
    });
    assert_eq!(a.offsets[0].1, kept.len() as u64, "new appends continue right after the surviving messages");
    store.close().expect("close");
    drop(store);
    let store = open(dir).expect("reopen after appending");
    assert_eq!(store.recovery().truncated_bytes, 0, "a clean restart truncates nothing");
    let mut all = kept.to_vec();
    all.push(Written { payload: extra, pos: a.pos });
    assert_holds(&store, &all);
}

#[test]
fn damaged_last_record_is_refused_when_the_checkpoint_says_it_was_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msgs = populate(dir.path(), &default_sizes());
    let last = msgs.last().expect("messages");
    let base = base_of(dir.path(), last.pos);
    assert!(base > 0, "the fixture must span several segments");
    let off = last.pos - base;
    xor_byte(&seg_path(dir.path(), base), off + record_total(dir.path(), last.pos) / 2, 0x5a);
    let err = expect_refused(dir.path());
    assert_corrupt_at(&err, &seg_path(dir.path(), base), off);
}

#[test]
fn damaged_last_record_without_a_checkpoint_is_a_torn_tail_and_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msgs = populate(dir.path(), &default_sizes());
    let last = msgs.last().expect("messages");
    let base = base_of(dir.path(), last.pos);
    let total = record_total(dir.path(), last.pos);
    xor_byte(&seg_path(dir.path(), base), last.pos - base + total / 2, 0x5a);
    std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
    {
        let store = open(dir.path()).expect("a torn tail is absorbed");
        assert_eq!(store.recovery().truncated_bytes, total, "exactly the damaged record is cut");
        assert_holds(&store, &msgs[..msgs.len() - 1]);
    }
    assert_eq!(
        std::fs::metadata(seg_path(dir.path(), base)).expect("segment").len(),
        last.pos - base,
        "the file is cut where the damaged record began"
    );
    assert_appends_survive_restart(dir.path(), &msgs[..msgs.len() - 1]);
}

/// A copy of a store's data dir, so one fixture serves several damage variants.
fn clone_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("tempdir");
    for (path, bytes) in files(src) {
        let to = dst.path().join(path.strip_prefix(src).expect("under src"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::write(to, bytes).expect("copy");
    }
    dst
}

#[test]
fn partial_frames_on_the_tail_are_truncated_and_nothing_else_is_lost() {
    use rand::{Rng, SeedableRng};
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut garbage: Vec<(&str, Vec<u8>)> = Vec::new();
    for n in [1usize, 3, 7, 13, 100] {
        garbage.push(("random bytes", (0..n).map(|_| rng.gen()).collect()));
    }
    // A frame prefix promising 5000 bytes of body when only some follow:
    // what a write cut off by a crash after its first bytes looks like.
    for body in [0usize, 100] {
        let mut g = 5000u32.to_le_bytes().to_vec();
        g.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
        g.extend((0..body).map(|_| rng.gen::<u8>()));
        garbage.push(("frame header claiming more than the file holds", g));
    }
    for (what, g) in &garbage {
        for keep_checkpoint in [true, false] {
            let dir = clone_dir(pristine.path());
            let bases = segment_bases(dir.path());
            let last = seg_path(dir.path(), *bases.last().expect("segments"));
            let len_before = std::fs::metadata(&last).expect("segment").len();
            append_bytes(&last, g);
            if !keep_checkpoint {
                std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
            }
            let ctx = format!("{what} ({} bytes), checkpoint kept: {keep_checkpoint}", g.len());
            {
                let store = open(dir.path()).unwrap_or_else(|e| panic!("{ctx}: a torn tail must not stop the store: {e}"));
                assert_eq!(store.recovery().truncated_bytes, g.len() as u64, "{ctx}: exactly the garbage is cut");
                assert_holds(&store, &msgs);
            }
            assert_eq!(
                std::fs::metadata(&last).expect("segment").len(),
                len_before,
                "{ctx}: the file is back to its length before the garbage"
            );
            assert_appends_survive_restart(dir.path(), &msgs);
        }
    }
}

#[test]
fn zeroed_tail_is_truncated() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    // A page the filesystem allocated but never got the data for reads back as zeros.
    for keep_checkpoint in [true, false] {
        let dir = clone_dir(pristine.path());
        let last = seg_path(dir.path(), *segment_bases(dir.path()).last().expect("segments"));
        append_bytes(&last, &[0u8; 4096]);
        if !keep_checkpoint {
            std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
        }
        {
            let store = open(dir.path())
                .unwrap_or_else(|e| panic!("checkpoint kept: {keep_checkpoint}: a zeroed tail must not stop the store: {e}"));
            assert_eq!(store.recovery().truncated_bytes, 4096, "checkpoint kept: {keep_checkpoint}");
            assert_holds(&store, &msgs);
        }
        assert_appends_survive_restart(dir.path(), &msgs);
    }
}

#[test]
fn damage_in_the_middle_of_the_last_segment_is_refused_naming_file_and_offset() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    let last_base = *segment_bases(pristine.path()).last().expect("segments");
    let in_last: Vec<&Written> = msgs.iter().filter(|w| w.pos >= last_base).collect();
    assert!(in_last.len() >= 3, "the fixture must put several records in the last segment");
    let victim = in_last[in_last.len() / 2];
    let off = victim.pos - last_base;
    let total = record_total(pristine.path(), victim.pos);
    // Without the checkpoint the valid records after the damage are what
    // tells it from a torn tail; with it, the synced position does.
    for keep_checkpoint in [true, false] {
        for at in [off + total / 2, off + 5, off] {
            let dir = clone_dir(pristine.path());
            let seg = seg_path(dir.path(), last_base);
            xor_byte(&seg, at, 0x01);
            if !keep_checkpoint {
                std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
            }
            let err = expect_refused(dir.path());
            assert_corrupt_at(&err, &seg, off);
        }
    }
}

#[test]
fn damage_in_a_sealed_segment_is_refused_naming_that_file() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    let bases = segment_bases(pristine.path());
    assert!(bases.len() >= 3, "the fixture must have at least two sealed segments");
    // A record in the middle of the first segment, and the very last record
    // of a sealed segment: nothing valid follows it in its file, so only the
    // "sealed segments are never torn" rule protects it.
    let mid_first = msgs.iter().filter(|w| w.pos < bases[1]).nth(20).expect("records in the first segment");
    let end_of_second = msgs.iter().filter(|w| w.pos >= bases[1] && w.pos < bases[2]).last().expect("records in the second segment");
    for (victim, base) in [(mid_first, bases[0]), (end_of_second, bases[1])] {
        for keep_checkpoint in [true, false] {
            let dir = clone_dir(pristine.path());
            let seg = seg_path(dir.path(), base);
            let off = victim.pos - base;
            xor_byte(&seg, off + record_total(dir.path(), victim.pos) / 2, 0x80);
            if !keep_checkpoint {
                std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
            }
            let err = expect_refused(dir.path());
            assert_corrupt_at(&err, &seg, off);
        }
    }
}

#[test]
fn damaged_segment_headers_are_refused() {
    let pristine = tempfile::tempdir().expect("tempdir");
    populate(pristine.path(), &default_sizes());
    let bases = segment_bases(pristine.path());
    for base in [bases[0], bases[bases.len() - 1]] {
        // (what, byte offset, mask): magic, the header CRC itself, and the base
        // field (covered by the CRC).
        for (what, at, mask) in [("magic", 0u64, 0x20u8), ("header crc", 25, 0x01), ("base field", 17, 0x01)] {
            let dir = clone_dir(pristine.path());
            let seg = seg_path(dir.path(), base);
            xor_byte(&seg, at, mask);
            let err = expect_refused(dir.path());
            let shown = err.to_string();
            assert!(
                matches!(&err, StoreError::Corrupt { path, offset: 0, .. } if *path == seg),
                "{what} of segment {base}: expected Corrupt at offset 0 of that file, got {shown}"
            );
            assert!(shown.contains(&seg_name(base)), "{what}: the error names the file: {shown}");
        }
    }
}

#[test]
fn a_header_with_a_valid_crc_but_the_wrong_base_is_refused() {
    // A segment renamed or copied under another name: the header is intact
    // but says it belongs elsewhere in the log.
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path(), &default_sizes());
    let bases = segment_bases(dir.path());
    let seg = seg_path(dir.path(), bases[1]);
    let mut buf = std::fs::read(&seg).expect("read");
    buf[16..24].copy_from_slice(&(bases[1] + 1).to_le_bytes());
    let crc = crc32c::crc32c(&buf[..24]);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, buf).expect("write");
    let err = expect_refused(dir.path());
    assert!(matches!(&err, StoreError::Corrupt { path, offset: 0, .. } if *path == seg), "got {err}");
}

#[test]
fn an_unknown_format_version_is_refused_by_name() {
    let pristine = tempfile::tempdir().expect("tempdir");
    populate(pristine.path(), &default_sizes());
    let bases = segment_bases(pristine.path());
    for base in [bases[0], bases[bases.len() - 1]] {
        let dir = clone_dir(pristine.path());
        let seg = seg_path(dir.path(), base);
        // What a future version would write: its own version byte under a valid CRC.
        let mut buf = std::fs::read(&seg).expect("read");
        buf[8] = 99;
        let crc = crc32c::crc32c(&buf[..24]);
        buf[24..28].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&seg, buf).expect("write");
        let err = expect_refused(dir.path());
        match &err {
            StoreError::UnsupportedVersion { path, version } => {
                assert_eq!(path, &seg);
                assert_eq!(*version, 99);
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains("99") && shown.contains(&seg_name(base)), "the error names the version and the file: {shown}");
    }
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path(), &default_sizes());
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 3, "the fixture must have a middle segment");
    std::fs::remove_file(seg_path(dir.path(), bases[1])).expect("delete a middle segment");
    let err = expect_refused(dir.path());
    let shown = err.to_string();
    // The file after the hole is the one that does not start where the log left off.
    assert!(matches!(&err, StoreError::Corrupt { path, .. } if *path == seg_path(dir.path(), bases[2])), "got {shown}");
    assert!(shown.contains("gap") && shown.contains(&seg_name(bases[2])), "the error says there is a gap, and where: {shown}");
}

#[test]
fn a_last_segment_cut_inside_its_header_by_a_crash_while_rolling_is_removed() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    let last_base = *segment_bases(pristine.path()).last().expect("segments");
    let before_last: Vec<Written> = msgs.iter().filter(|w| w.pos < last_base).cloned().collect();
    // What a crash while rolling leaves: the new file with part of its header,
    // and a checkpoint no further than the end of the previous segment (the
    // writer fsyncs, and may checkpoint, right before it rolls) or none.
    for checkpoint_at_roll in [true, false] {
        let dir = clone_dir(pristine.path());
        let seg = seg_path(dir.path(), last_base);
        let header: Vec<u8> = std::fs::read(&seg).expect("read")[..10].to_vec();
        std::fs::write(&seg, &header).expect("cut to 10 bytes");
        if checkpoint_at_roll {
            write_checkpoint(dir.path(), last_base);
        } else {
            std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");
        }
        {
            let store = open(dir.path()).unwrap_or_else(|e| panic!("checkpoint at roll: {checkpoint_at_roll}: {e}"));
            assert_eq!(store.recovery().truncated_bytes, 10);
            assert_holds(&store, &before_last);
        }
        assert!(
            !seg.exists() || std::fs::metadata(&seg).expect("meta").len() >= HEADER_BYTES as u64,
            "the stub is gone (or replaced by a whole new segment)"
        );
        assert_appends_survive_restart(dir.path(), &before_last);
    }
}

/// The clean close wrote a checkpoint past the start of the last segment, so
/// its header and records were fsynced: a file cut to 10 bytes there is lost
/// synced data, not a crash while rolling. The contract says refuse and
/// modify nothing; deleting the file destroys the evidence and the records.
#[test]
fn a_last_segment_cut_inside_its_header_after_its_records_were_synced_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msgs = populate(dir.path(), &default_sizes());
    let last_base = *segment_bases(dir.path()).last().expect("segments");
    assert!(msgs.iter().any(|w| w.pos >= last_base), "acknowledged messages live in the last segment");
    let seg = seg_path(dir.path(), last_base);
    let header: Vec<u8> = std::fs::read(&seg).expect("read")[..10].to_vec();
    std::fs::write(&seg, &header).expect("cut to 10 bytes");
    let err = expect_refused(dir.path());
    assert!(matches!(&err, StoreError::Corrupt { path, .. } if *path == seg), "got {err}");
}

/// The checkpoint says everything up to the end was fsynced; a last segment
/// that now ends one whole record earlier has lost synced (acknowledged)
/// data. No record is damaged, so only comparing the end of the log with the
/// synced position can notice; opening as if nothing happened silently drops
/// an acknowledged message.
#[test]
fn a_last_segment_cut_at_a_record_boundary_below_the_synced_position_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msgs = populate(dir.path(), &default_sizes());
    let last = msgs.last().expect("messages");
    let base = base_of(dir.path(), last.pos);
    let seg = seg_path(dir.path(), base);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("open segment");
    f.set_len(last.pos - base).expect("cut the last record off whole");
    drop(f);
    let err = expect_refused(dir.path());
    assert!(matches!(&err, StoreError::Corrupt { .. }), "got {err:?}");
}

/// The same loss, a whole segment at a time: the last segment, holding
/// synced records, is gone.
#[test]
fn a_missing_last_segment_holding_synced_records_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msgs = populate(dir.path(), &default_sizes());
    let last_base = *segment_bases(dir.path()).last().expect("segments");
    assert!(msgs.iter().any(|w| w.pos >= last_base), "acknowledged messages live in the last segment");
    std::fs::remove_file(seg_path(dir.path(), last_base)).expect("delete the last segment");
    let err = expect_refused(dir.path());
    assert!(matches!(&err, StoreError::Corrupt { .. }), "got {err:?}");
}

/// A crash during the very first start, after the first segment file was
/// created but before its 32-byte header was written: nothing was ever
/// acknowledged, so the next start must succeed, as it does for a later
/// segment cut the same way.
#[test]
fn a_first_segment_cut_inside_its_header_by_a_crash_on_first_start_is_recovered() {
    for len in [0usize, 10] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(log_dir(dir.path())).expect("mkdir");
        let mut header = b"PMQLOG\r\n".to_vec();
        header.resize(32, 0);
        header[8] = 1;
        std::fs::write(seg_path(dir.path(), 0), &header[..len]).expect("write stub");
        let store = open(dir.path()).unwrap_or_else(|e| panic!("first segment of {len} bytes: the store must start: {e}"));
        drop(store);
        populate_more_and_check(dir.path());
    }
}

/// Declares `s`, appends one message, restarts, and finds it.
fn populate_more_and_check(dir: &Path) {
    let store = open(dir).expect("open");
    let p = payload(1, 1);
    block_on(async {
        let s = store.declare_queue(STREAM, QueueOptions::stream()).await.expect("declare").id;
        store.append(Message::new(p.clone()), &[s]).await.expect("append");
    });
    store.close().expect("close");
    drop(store);
    let store = open(dir).expect("reopen");
    assert_eq!(read_stream(&store), vec![(0, p)]);
}

/// Which cut to make in the last segment: anywhere, or near a record boundary
/// (where off-by-one errors live).
#[derive(Debug, Clone)]
enum Cut {
    Anywhere(prop::sample::Index),
    NearBoundary(prop::sample::Index, i64),
}

fn cut_strategy() -> impl Strategy<Value = Cut> {
    // Exactly on a boundary, one byte either side, or a little further off.
    let delta = prop_oneof![Just(0i64), Just(-1i64), Just(1i64), -9i64..=9];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Cut::Anywhere),
        (any::<prop::sample::Index>(), delta).prop_map(|(i, d)| Cut::NearBoundary(i, d)),
    ]
}

fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(), ..ProptestConfig::default() })]

    /// A crash can cut the last segment at any byte. With no checkpoint to
    /// go by, the store must open and hold exactly the messages whose
    /// records lie wholly before the cut, unaltered and in order.
    #[test]
    fn a_cut_at_any_byte_keeps_exactly_the_whole_records_before_it(
        sizes in prop::collection::vec(0usize..3000, 1..40),
        cut in cut_strategy(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        // 40 x 1.8 KB first, so the random records are not all in the first
        // segment and the cut hits a last segment that follows sealed ones.
        let mut all_sizes = vec![1800usize; 40];
        all_sizes.extend(&sizes);
        let msgs = populate(dir.path(), &all_sizes);
        let last_base = *segment_bases(dir.path()).last().expect("segments");
        prop_assert!(last_base > 0);
        let seg = seg_path(dir.path(), last_base);
        let len = std::fs::metadata(&seg).expect("segment").len();
        // The records of the last segment with where each ends, as file offsets.
        let in_last: Vec<(&Written, u64)> = msgs.iter().filter(|w| w.pos >= last_base).map(|w| (w, w.pos - last_base + record_total(dir.path(), w.pos))).collect();
        let ends: Vec<u64> = in_last.iter().map(|&(_, e)| e).collect();
        prop_assert_eq!(ends.last().copied(), Some(len), "the last record ends the file");
        let at = match cut {
            Cut::Anywhere(i) => i.index(len as usize + 1) as u64,
            Cut::NearBoundary(i, d) => {
                let mut b = vec![0, HEADER_BYTES as u64];
                b.extend(&ends);
                (b[i.index(b.len())] as i64 + d).clamp(0, len as i64) as u64
            }
        };
        let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("open segment");
        f.set_len(at).expect("cut");
        drop(f);
        std::fs::remove_file(checkpoint(dir.path())).expect("remove checkpoint");

        // Survivors: all of the sealed segments, and the last segment's
        // records that end at or before the cut (none if the cut is inside
        // the header, which removes the file).
        let kept: Vec<Written> = msgs.iter().filter(|w| w.pos < last_base).chain(in_last.iter().filter(|&&(_, e)| e <= at).map(|&(w, _)| w)).cloned().collect();
        let kept_end = if at < HEADER_BYTES as u64 { 0 } else { ends.iter().copied().filter(|&e| e <= at).max().unwrap_or(HEADER_BYTES as u64) };
        let store = open(dir.path()).map_err(|e| TestCaseError::fail(format!("cut at {at} of {len}: {e}")))?;
        prop_assert_eq!(store.recovery().truncated_bytes, at - kept_end, "cut at {} of {}", at, len);
        let got = read_stream(&store);
        let want: Vec<(u64, Bytes)> = kept.iter().enumerate().map(|(i, w)| (i as u64, w.payload.clone())).collect();
        prop_assert_eq!(got.len(), want.len(), "cut at {} of {}: message count", at, len);
        prop_assert!(got == want, "cut at {} of {}: messages differ", at, len);
        drop(store);
        assert_appends_survive_restart(dir.path(), &kept);
    }
}

/// Under fsync=interval/never a sealed segment's fsync runs in the background
/// after the roll, so after a power loss its tail can be torn while later
/// segments hold data. Past the fsynced position that is a torn tail: cut it
/// and drop everything after (never promised durable). Below it, damage.
#[test]
fn a_sealed_segment_torn_past_the_fsynced_position_is_cut_with_everything_after_it() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let msgs = populate(pristine.path(), &default_sizes());
    let bases = segment_bases(pristine.path());
    assert!(bases.len() >= 3, "the fixture must have at least two sealed segments");
    let sealed = bases[bases.len() - 2];
    let in_sealed: Vec<&Written> = msgs.iter().filter(|w| w.pos >= sealed && w.pos < bases[bases.len() - 1]).collect();
    let victim = in_sealed[in_sealed.len() / 2];
    let kept: Vec<Written> =
        msgs.iter().filter(|w| w.pos < victim.pos).map(|w| Written { payload: w.payload.clone(), pos: w.pos }).collect();

    // Synced only up to the victim: the damage is past it, so torn.
    let dir = clone_dir(pristine.path());
    xor_byte(&seg_path(dir.path(), sealed), victim.pos - sealed + 10, 0x40);
    write_checkpoint(dir.path(), victim.pos);
    let store = open(dir.path()).expect("a torn unsynced sealed segment must not stop the store");
    assert!(store.recovery().truncated_bytes > 0);
    assert_eq!(store.recovery().segments, bases.len() - 1, "the segment after the torn one is removed");
    assert_holds(&store, &kept);
    store.close().expect("close");
    drop(store);
    assert!(!seg_path(dir.path(), bases[bases.len() - 1]).exists());
    assert_appends_survive_restart(dir.path(), &kept);

    // Synced past the victim: the same damage is corruption, refused untouched.
    let dir = clone_dir(pristine.path());
    xor_byte(&seg_path(dir.path(), sealed), victim.pos - sealed + 10, 0x40);
    write_checkpoint(dir.path(), victim.pos + record_total(pristine.path(), victim.pos));
    let err = expect_refused(dir.path());
    assert_corrupt_at(&err, &seg_path(dir.path(), sealed), victim.pos - sealed);
}
