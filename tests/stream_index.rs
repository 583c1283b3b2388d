//! The stream index keeps older batches packed in blocks behind a sparse
//! header per block: reads by offset and by timestamp that land anywhere
//! inside a block (not on a block's first batch) return the right records,
//! after compaction has moved batches of a packed block to new positions,
//! and after a restart rebuilt the index from the log (relocated copies
//! replayed). Real files, a real writer thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polymq::clock::ManualClock;
use polymq::queue::QueueOptions;
use polymq::record::Message;
use polymq::{FsyncPolicy, Store, StoreConfig};

const T0: u64 = 1_800_000_000_000;
const BATCHES: u64 = 1_000;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.fsync = FsyncPolicy::Never;
    c.maintenance_interval = Duration::ZERO;
    c.segment_bytes = 64 * 1024;
    c
}

fn maintain(s: &Arc<Store>) -> polymq::store::MaintenanceReport {
    let s = s.clone();
    std::thread::spawn(move || s.run_maintenance()).join().expect("join").expect("maintenance")
}

fn stream_msg(i: u64) -> Message {
    let mut m = Message::new(Bytes::from(format!("s{i}")));
    // Ten milliseconds apart, except that offsets 600..610 share one timestamp.
    m.timestamp_ms = if (600..610).contains(&i) { T0 + 6_000 } else { T0 + i * 10 };
    m
}

/// Reads that start inside packed blocks, by offset and by time.
fn check_reads(s: &Store, st: polymq::queue::QueueId, when: &str) {
    for from in [0, 1, 2, 63, 127, 128, 129, 200, 255, 256, 257, 401, 599, 605, 777, 870, 871, 998, 999] {
        let r = s.read(st, from, 3, u64::MAX).expect("read");
        let got: Vec<(u64, String)> =
            r.messages.iter().map(|m| (m.offset, String::from_utf8_lossy(&m.message.payload).into_owned())).collect();
        let want: Vec<(u64, String)> = (from..(from + 3).min(BATCHES)).map(|o| (o, format!("s{o}"))).collect();
        assert_eq!(got, want, "{when}: read from offset {from}");
        assert_eq!(r.next_offset, BATCHES, "{when}");
        assert!(s.stream_bytes_from(st, from, u64::MAX) > 0, "{when}: bytes from {from}");
    }
    for o in [0, 1, 127, 129, 300, 611, 998] {
        assert_eq!(s.offset_for_timestamp(st, T0 + o * 10).expect("ts"), o, "{when}: exact timestamp of offset {o}");
        assert_eq!(s.offset_for_timestamp(st, T0 + o * 10 - 5).expect("ts"), o, "{when}: just before offset {o}");
    }
    assert_eq!(s.offset_for_timestamp(st, T0 + 6_000).expect("ts"), 600, "{when}: the first of equal timestamps");
    assert_eq!(s.offset_for_timestamp(st, T0 + 5_995).expect("ts"), 600, "{when}");
    assert_eq!(s.offset_for_timestamp(st, T0 + 6_001).expect("ts"), 610, "{when}");
    assert_eq!(s.offset_for_timestamp(st, T0 + BATCHES * 10).expect("ts"), BATCHES, "{when}: past the end");
    assert_eq!(s.offset_for_timestamp(st, 0).expect("ts"), 0, "{when}");
    let all = s.read(st, 0, 10_000, u64::MAX).expect("read all");
    assert_eq!(all.messages.len() as u64, BATCHES, "{when}");
    assert!(all.messages.iter().enumerate().all(|(i, m)| m.offset == i as u64 && m.message.payload == format!("s{i}")), "{when}");
}

#[tokio::test]
async fn reads_between_sparse_entries_survive_compaction_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0 + 20_000));
    let c = cfg(dir.path());
    let s = Store::open_with_clock(c.clone(), clock.clone()).expect("open");
    let st = s.declare_queue("events", QueueOptions::stream()).await.expect("stream").id;
    let q = s.declare_queue("work", QueueOptions::default()).await.expect("queue").id;
    // Stream batches interleaved with big queue messages, so each segment is
    // mostly queue data; once that is consumed, compaction copies the stream
    // batches forward one by one (relocations inside packed blocks).
    let filler = Bytes::from(vec![b'q'; 2_000]);
    for i in 0..BATCHES {
        s.append(stream_msg(i), &[st]).await.expect("append stream");
        s.append(Message::new(filler.clone()), &[q]).await.expect("append queue");
    }
    check_reads(&s, st, "as written");

    loop {
        let d = s.pop(q, 500, Duration::from_secs(30), Duration::ZERO).await.expect("pop");
        if d.is_empty() {
            break;
        }
        let receipts: Vec<_> = d.iter().map(|d| d.receipt).collect();
        s.ack_many(&receipts).await.expect("ack");
    }
    let segs_before = s.metrics().segments;
    let first = maintain(&s);
    let second = maintain(&s);
    let deleted = first.segments_deleted + second.segments_deleted;
    assert!(deleted * 2 > segs_before as usize, "compaction moved the stream out of most segments: {deleted} of {segs_before} deleted");
    check_reads(&s, st, "after compaction");

    s.close().expect("close");
    drop(s);
    let s = Store::open_with_clock(c, clock).expect("reopen");
    check_reads(&s, st, "after a restart");
}
