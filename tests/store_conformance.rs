//! Conformance of the core API against the disk store: real files, a real
//! writer thread, time moved by hand where timing matters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polymq::clock::ManualClock;
use polymq::queue::{NackAction, QueueOptions};
use polymq::record::Message;
use polymq::{FsyncPolicy, Store, StoreConfig};

const T0: u64 = 1_800_000_000_000;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.fsync = FsyncPolicy::Always;
    c.maintenance_interval = Duration::ZERO;
    c
}

fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (Store::open_with_clock(cfg(dir), clock.clone()).expect("open"), clock)
}

fn msg(s: &str) -> Message {
    Message::new(Bytes::copy_from_slice(s.as_bytes()))
}

fn payloads(d: &[polymq::store::Delivery]) -> Vec<String> {
    d.iter().map(|d| String::from_utf8_lossy(&d.message.payload).into_owned()).collect()
}

const NOW: Duration = Duration::ZERO;
const INVIS: Duration = Duration::from_secs(30);

#[tokio::test]
async fn append_once_index_into_many_queues_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let a = s.declare_queue("a", QueueOptions::default()).await.expect("a").id;
    let b = s.declare_queue("b", QueueOptions::default()).await.expect("b").id;
    let st = s.declare_queue("s", QueueOptions::stream()).await.expect("s").id;
    let before = s.metrics().log_bytes;
    let mut m = msg("hello").with_key("sensors/dev42/temp");
    m.headers = vec![(Bytes::from("content-type"), Bytes::from("text/plain"))];
    let app = s.append(m.clone(), &[a, b, st]).await.expect("append");
    assert_eq!(app.offsets, vec![(a, 0), (b, 0), (st, 0)]);
    let grown = s.metrics().log_bytes - before;
    assert!(grown < 200, "stored once: the log grew by {grown} bytes for a 5-byte payload in 3 queues");
    for q in [a, b] {
        let d = s.pop(q, 10, INVIS, NOW).await.expect("pop");
        assert_eq!(payloads(&d), ["hello"]);
        assert_eq!(d[0].message.key, Bytes::from("sensors/dev42/temp"));
        assert_eq!(d[0].message.headers, m.headers);
        assert_eq!(d[0].deliveries, 1);
    }
    let r = s.read(st, 0, 10, 1 << 20).expect("read");
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].message.payload, Bytes::from("hello"));
    assert_eq!((r.start_offset, r.next_offset), (0, 1));
    assert!(s.pop(st, 1, INVIS, Duration::from_secs(30)).await.is_err(), "a stream is not popped (and does not hang)");
    assert!(s.read(a, 0, 1, 1 << 20).is_err(), "a queue is not read by offset");
}

#[tokio::test]
async fn everything_acknowledged_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, st) = {
        let (s, _) = open(dir.path());
        let q = s.declare_queue("jobs", QueueOptions::default()).await.expect("q").id;
        let st = s.declare_queue("events", QueueOptions::stream()).await.expect("s").id;
        for i in 0..10 {
            s.append(msg(&format!("m{i}")), &[q, st]).await.expect("append");
        }
        let d = s.pop(q, 3, INVIS, NOW).await.expect("pop");
        for x in &d {
            s.ack(x.receipt).await.expect("ack");
        }
        s.commit_offset("g1", st, 7).await.expect("commit");
        s.close().expect("close");
        (q, st)
    };
    let (s, _) = open(dir.path());
    assert_eq!(s.queue_id("jobs"), Some(q));
    assert_eq!(s.queue_id("events"), Some(st));
    let d = s.pop(q, 100, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d), (3..10).map(|i| format!("m{i}")).collect::<Vec<_>>(), "acked messages stay gone, the rest come back in order");
    assert_eq!(s.committed_offset("g1", st), Some(7));
    let r = s.read(st, 0, 100, 1 << 20).expect("read");
    assert_eq!(r.messages.len(), 10);
    assert_eq!(r.next_offset, 10);
    // New appends continue the offsets, never reuse them.
    let app = s.append(msg("after"), &[st]).await.expect("append");
    assert_eq!(app.offsets, vec![(st, 10)]);
}

#[tokio::test]
async fn invisibility_expiry_redelivers_and_ack_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let q = s.declare_queue("q", QueueOptions::default()).await.expect("q").id;
    s.append(msg("x"), &[q]).await.expect("append");
    let first = s.pop(q, 1, Duration::from_secs(10), NOW).await.expect("pop");
    assert_eq!(first.len(), 1);
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "invisible while in flight");
    clock.advance(10_001);
    let again = s.pop(q, 1, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&again), ["x"]);
    assert_eq!(again[0].deliveries, 2);
    assert!(s.ack(first[0].receipt).await.is_err(), "a receipt of an earlier delivery is stale");
    s.ack(again[0].receipt).await.expect("ack");
    clock.advance(60_000);
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "acked is gone");
}

#[tokio::test]
async fn change_invisible_extends_and_nack_requeues_with_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let q = s.declare_queue("q", QueueOptions::default()).await.expect("q").id;
    s.append(msg("x"), &[q]).await.expect("append");
    let d = s.pop(q, 1, Duration::from_secs(10), NOW).await.expect("pop");
    clock.advance(9_000);
    s.change_invisible(d[0].receipt, Duration::from_secs(20)).expect("extend");
    clock.advance(5_000);
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "still invisible after the extension");
    s.nack(d[0].receipt, NackAction::Requeue { delay_ms: 2_000 }).await.expect("nack");
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "requeued with a delay");
    clock.advance(2_000);
    let d2 = s.pop(q, 1, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d2), ["x"]);
    assert_eq!(d2[0].deliveries, 2);
}

#[tokio::test]
async fn delivery_limit_dead_letters_into_the_dlq_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let opts = QueueOptions { max_deliveries: Some(3), dead_letter: Some("q.dlq".into()), ..QueueOptions::default() };
    let q = s.declare_queue("q", opts).await.expect("q").id;
    s.append(msg("poison"), &[q]).await.expect("append");
    for n in 1..=3 {
        let d = s.pop(q, 1, INVIS, NOW).await.expect("pop");
        assert_eq!(d.len(), 1, "delivery {n}");
        assert_eq!(d[0].deliveries, n);
        s.nack(d[0].receipt, NackAction::Requeue { delay_ms: 0 }).await.expect("nack");
    }
    clock.advance(1);
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "no fourth delivery");
    let dlq = s.queue_id("q.dlq").expect("dlq created");
    let before = s.metrics().log_bytes;
    let d = s.pop(dlq, 1, INVIS, NOW).await.expect("pop dlq");
    assert_eq!(payloads(&d), ["poison"]);
    assert_eq!(s.metrics().log_bytes, before);
    s.close().expect("close");
    drop(s);
    let (s, _) = open(dir.path());
    let q = s.queue_id("q").expect("q");
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty(), "dead-lettered stays out of q after restart");
    let dlq = s.queue_id("q.dlq").expect("dlq");
    assert_eq!(payloads(&s.pop(dlq, 1, INVIS, NOW).await.expect("pop")), ["poison"], "and in the DLQ");
}

#[tokio::test]
async fn expired_in_flight_past_the_limit_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let opts = QueueOptions { max_deliveries: Some(1), dead_letter: Some("dlq".into()), ..QueueOptions::default() };
    let q = s.declare_queue("q", opts).await.expect("q").id;
    s.append(msg("m"), &[q]).await.expect("append");
    assert_eq!(s.pop(q, 1, Duration::from_secs(1), NOW).await.expect("pop").len(), 1);
    clock.advance(1_001);
    assert!(s.pop(q, 1, INVIS, NOW).await.expect("pop").is_empty());
    let dlq = s.queue_id("dlq").expect("dlq");
    assert_eq!(payloads(&s.pop(dlq, 1, INVIS, NOW).await.expect("pop")), ["m"]);
}

#[tokio::test]
async fn fifo_groups_hold_order_until_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let q = s.declare_queue("orders", QueueOptions { fifo: true, ..QueueOptions::default() }).await.expect("q").id;
    for (g, p) in [("A", "a1"), ("A", "a2"), ("B", "b1"), ("A", "a3"), ("B", "b2")] {
        let mut m = msg(p);
        m.group = Some(Bytes::copy_from_slice(g.as_bytes()));
        s.append(m, &[q]).await.expect("append");
    }
    let d = s.pop(q, 10, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d), ["a1", "b1"], "one in flight per group");
    assert!(s.pop(q, 10, INVIS, NOW).await.expect("pop").is_empty());
    s.ack(d[0].receipt).await.expect("ack a1");
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["a2"]);
    s.ack(d[1].receipt).await.expect("ack b1");
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["b2"]);
}

#[tokio::test]
async fn priorities_deliver_highest_first_then_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let q = s.declare_queue("p", QueueOptions { max_priority: 5, ..QueueOptions::default() }).await.expect("q").id;
    for (p, prio) in [("low1", 0), ("hi1", 5), ("mid", 2), ("hi2", 9), ("low2", 0)] {
        let mut m = msg(p);
        m.priority = prio;
        s.append(m, &[q]).await.expect("append");
    }
    // Priority 9 is capped at the queue's 5, so it ties with hi1 and keeps its order.
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["hi1", "hi2", "mid", "low1", "low2"]);
}

#[tokio::test]
async fn delayed_messages_appear_on_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let q = s.declare_queue("d", QueueOptions::default()).await.expect("q").id;
    let mut m = msg("later");
    m.deliver_at_ms = T0 + 5_000;
    s.append(m, &[q]).await.expect("append");
    s.append(msg("now"), &[q]).await.expect("append");
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["now"]);
    clock.advance(4_999);
    assert!(s.pop(q, 10, INVIS, NOW).await.expect("pop").is_empty());
    clock.advance(1);
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["later"]);
}

#[tokio::test]
async fn rate_limit_caps_pops_per_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let q = s.declare_queue("r", QueueOptions { rate_per_sec: Some(5), ..QueueOptions::default() }).await.expect("q").id;
    for i in 0..20 {
        s.append(msg(&format!("{i}")), &[q]).await.expect("append");
    }
    assert_eq!(s.pop(q, 100, INVIS, NOW).await.expect("pop").len(), 5);
    assert_eq!(s.pop(q, 100, INVIS, NOW).await.expect("pop").len(), 0);
    clock.advance(400);
    assert_eq!(s.pop(q, 100, INVIS, NOW).await.expect("pop").len(), 2);
    clock.advance(10_000);
    assert_eq!(s.pop(q, 100, INVIS, NOW).await.expect("pop").len(), 5, "burst is capped at one second of tokens");
}

#[tokio::test]
async fn long_poll_wakes_on_append_without_busy_looping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let q = s.declare_queue("lp", QueueOptions::default()).await.expect("q").id;
    let s2 = s.clone();
    let waiter = tokio::spawn(async move { s2.pop(q, 1, INVIS, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    s.append(msg("wake"), &[q]).await.expect("append");
    let d = waiter.await.expect("join").expect("pop");
    assert_eq!(payloads(&d), ["wake"]);
    assert!(t.elapsed() < Duration::from_secs(5), "woken by the append, not by the 20 s timeout");
}

#[tokio::test]
async fn read_by_timestamp_and_stream_long_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let st = s.declare_queue("ts", QueueOptions::stream()).await.expect("q").id;
    for i in 0..5u64 {
        let mut m = msg(&format!("{i}"));
        m.timestamp_ms = T0 + i * 1000;
        s.append(m, &[st]).await.expect("append");
    }
    assert_eq!(s.offset_for_timestamp(st, T0 + 2500).expect("ts"), 3);
    assert_eq!(s.offset_for_timestamp(st, T0 + 99_000).expect("ts"), 5, "past the end: the next offset");
    let s2 = s.clone();
    let reader = tokio::spawn(async move { s2.read_wait(st, 5, 10, 1 << 20, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.append(msg("5"), &[st]).await.expect("append");
    let r = reader.await.expect("join").expect("read");
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].offset, 5);
}

#[tokio::test]
async fn kafka_style_batches_span_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let st = s.declare_queue("k", QueueOptions::stream()).await.expect("q").id;
    let mut m = msg("batch-of-3");
    m.span = 3;
    assert_eq!(s.append(m, &[st]).await.expect("append").offsets, vec![(st, 0)]);
    assert_eq!(s.append(msg("one"), &[st]).await.expect("append").offsets, vec![(st, 3)]);
    let r = s.read(st, 1, 10, 1 << 20).expect("read");
    assert_eq!(r.messages[0].offset, 0, "a read from inside a batch returns the whole batch");
    assert_eq!(r.next_offset, 4);
}

#[tokio::test]
async fn redeclare_with_other_options_is_refused_and_delete_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let q = s.declare_queue("x", QueueOptions::default()).await.expect("q").id;
    assert_eq!(s.declare_queue("x", QueueOptions::default()).await.expect("same").id, q);
    assert!(s.declare_queue("x", QueueOptions { fifo: true, ..QueueOptions::default() }).await.is_err());
    s.append(msg("m"), &[q]).await.expect("append");
    assert!(s.delete_queue(q).await.expect("delete"));
    assert!(s.queue_id("x").is_none());
    let q2 = s.declare_queue("x", QueueOptions::default()).await.expect("again").id;
    assert_ne!(q, q2, "a new queue of the same name has a new id");
    assert!(s.pop(q2, 1, INVIS, NOW).await.expect("pop").is_empty(), "and none of the old messages");
    assert!(s.pop(q, 1, INVIS, NOW).await.is_err(), "the old id is dead");
    s.close().expect("close");
    drop(s);
    let (s, _) = open(dir.path());
    assert_eq!(s.queue_id("x"), Some(q2));
}

#[tokio::test]
async fn idle_queues_expire_but_busy_ones_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let ttl = QueueOptions { idle_ttl_ms: Some(60_000), ..QueueOptions::default() };
    let idle = s.declare_queue("idle", ttl.clone()).await.expect("q").id;
    let used = s.declare_queue("used", ttl).await.expect("q").id;
    let _ = idle;
    clock.advance(50_000);
    s.touch(used);
    clock.advance(20_000);
    let rep = maintain(&s);
    assert_eq!(rep.queues_expired, 1);
    assert!(s.queue_id("idle").is_none());
    assert!(s.queue_id("used").is_some());
}

#[tokio::test]
async fn retention_and_reclaim_free_segments_but_never_live_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let mut c = cfg(dir.path());
    c.segment_bytes = 64 * 1024;
    c.fsync = FsyncPolicy::Never;
    let s = Store::open_with_clock(c.clone(), clock.clone()).expect("open");
    let st = s.declare_queue("stream", QueueOptions { retention_bytes: Some(100_000), ..QueueOptions::stream() }).await.expect("s").id;
    let q = s.declare_queue("queue", QueueOptions::default()).await.expect("q").id;
    s.append(msg("keep me"), &[q]).await.expect("append");
    s.commit_offset("g", st, 1).await.expect("commit");
    s.bind("ex", &polymq::route::Pattern::exact("k"), q).await.expect("bind");
    let payload = Bytes::from(vec![7u8; 1000]);
    for _ in 0..1000 {
        s.append(Message::new(payload.clone()), &[st]).await.expect("append");
    }
    let segs_before = s.metrics().segments;
    let rep = maintain(&s);
    assert!(rep.batches_dropped > 800, "retention dropped {}", rep.batches_dropped);
    assert_eq!(rep.segments_deleted, 0, "the live message in the first segment pins it");
    assert!(segs_before > 10);
    let d = s.pop(q, 1, INVIS, NOW).await.expect("pop");
    s.ack(d[0].receipt).await.expect("ack");
    let rep = maintain(&s);
    assert!(rep.segments_deleted > 5, "after the ack the dead prefix goes: {rep:?}");
    let r = s.read(st, 0, 10_000, u64::MAX).expect("read");
    let kept = r.messages.len();
    assert!((90..=110).contains(&kept), "retention keeps ~100 KB: {kept}");
    s.close().expect("close");
    drop(s);
    // Restart: declarations and group offsets from deleted segments come from the snapshot.
    let s = Store::open_with_clock(c, clock).expect("reopen");
    let st2 = s.queue_id("stream").expect("stream survives");
    assert_eq!(st2, st);
    assert!(s.queue_id("queue").is_some());
    assert_eq!(s.committed_offset("g", st), Some(1));
    assert_eq!(s.route("ex", &["k"], false).len(), 1, "bindings from reclaimed segments come from the snapshot");
    assert!(std::fs::metadata(dir.path().join("log").join("00000000000000000000.log")).is_err(), "the first segment really is gone");
    let r2 = s.read(st, 0, 10_000, u64::MAX).expect("read");
    assert_eq!(r2.next_offset, 1000, "offsets never go back");
    assert_eq!(r2.messages.len(), kept);
}

#[tokio::test]
async fn publish_routes_by_pattern_and_bindings_survive_restart() {
    use polymq::route::Pattern;
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = |s: &str| Pattern::parse(s, '/', "+", "#").expect("pattern");
    let (temps, all, dev42) = {
        let (s, _) = open(dir.path());
        let temps = s.declare_queue("temps", QueueOptions::default()).await.expect("q").id;
        let all = s.declare_queue("all", QueueOptions::default()).await.expect("q").id;
        let dev42 = s.declare_queue("dev42", QueueOptions::default()).await.expect("q").id;
        assert!(s.bind("amq.topic", &mqtt("sensors/+/temp"), temps).await.expect("bind"));
        assert!(!s.bind("amq.topic", &mqtt("sensors/+/temp"), temps).await.expect("bind"), "same binding twice is one binding");
        s.bind("amq.topic", &mqtt("#"), all).await.expect("bind");
        s.bind("amq.topic", &mqtt("sensors/dev42/#"), dev42).await.expect("bind");
        s.bind("amq.topic", &mqtt("sensors/#"), dev42).await.expect("bind");
        let before = s.metrics().log_bytes;
        let app = s.publish("amq.topic", &["sensors", "dev42", "temp"], true, msg("21.5")).await.expect("publish").expect("routed");
        assert_eq!(app.offsets.len(), 3, "three queues, each once even when two of its patterns match");
        assert!(s.metrics().log_bytes - before < 150, "stored once");
        assert!(s.publish("other.space", &["x"], true, msg("nobody")).await.expect("publish").is_none(), "unroutable");
        assert!(
            s.publish("amq.topic", &["$SYS", "x"], true, msg("sys")).await.expect("publish").is_none(),
            "`#` skips $ topics under the MQTT rule"
        );
        s.close().expect("close");
        (temps, all, dev42)
    };
    let (s, _) = open(dir.path());
    assert_eq!(s.route("amq.topic", &["sensors", "dev1", "temp"], true), {
        let mut v = vec![temps, all, dev42];
        v.sort();
        v
    });
    assert!(s.unbind("amq.topic", &mqtt("#"), all).await.expect("unbind"));
    assert!(s.delete_queue(dev42).await.expect("delete"));
    assert_eq!(s.route("amq.topic", &["sensors", "dev42", "temp"], true), vec![temps], "unbind and delete remove bindings");
    s.close().expect("close");
    drop(s);
    let (s, _) = open(dir.path());
    assert_eq!(s.route("amq.topic", &["sensors", "dev42", "temp"], true), vec![temps], "and that survives a restart");
    assert_eq!(payloads(&s.pop(temps, 10, INVIS, NOW).await.expect("pop")), ["21.5"]);
}

#[tokio::test]
async fn ack_many_acks_a_batch_and_skips_stale_receipts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let q = s.declare_queue("q", QueueOptions::default()).await.expect("q").id;
    for i in 0..5 {
        s.append(msg(&format!("{i}")), &[q]).await.expect("append");
    }
    let d = s.pop(q, 5, Duration::from_secs(1), NOW).await.expect("pop");
    clock.advance(1_001);
    let again = s.pop(q, 1, INVIS, NOW).await.expect("pop");
    assert_eq!(again.len(), 1);
    let receipts: Vec<_> = d.iter().map(|x| x.receipt).collect();
    // The first receipt is stale (redelivered as `again`); the other four expired too.
    assert_eq!(s.ack_many(&receipts).await.expect("ack_many"), 5, "every receipt expired");
    let d2 = s.pop(q, 10, INVIS, NOW).await.expect("pop");
    assert_eq!(d2.len(), 4);
    let mut rs: Vec<_> = d2.iter().map(|x| x.receipt).collect();
    rs.push(again[0].receipt);
    assert_eq!(s.ack_many(&rs).await.expect("ack_many"), 0);
    clock.advance(60_000);
    assert!(s.pop(q, 10, INVIS, NOW).await.expect("pop").is_empty());
}

#[tokio::test]
async fn submit_many_appends_in_order_and_answers_each_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open(dir.path());
    let q = s.declare_queue("q", QueueOptions::default()).await.expect("q").id;
    let mem = s.declare_queue("mem", QueueOptions { transient: true, ..QueueOptions::default() }).await.expect("mem").id;
    let big = Message::new(Bytes::from(vec![0u8; polymq::limits::RECORD_BYTES_MAX + 1]));
    // More than one chunk, a refused message in the middle, a memory-only one.
    let mut batch: Vec<(Message, Vec<polymq::queue::QueueId>)> = (0..300).map(|i| (msg(&format!("{i}")), vec![q])).collect();
    batch.insert(150, (big, vec![q]));
    batch.push((msg("transient"), vec![mem]));
    let results = s.submit_many(batch.iter().map(|(m, t)| (m.clone(), t.as_slice()))).await;
    assert_eq!(results.len(), 302);
    assert!(matches!(results[150], Err(polymq::StoreError::RecordTooLarge { .. })), "the oversized one alone is refused");
    let mut tickets: Vec<_> = results.into_iter().enumerate().filter(|(i, _)| *i != 150).map(|(_, r)| r.expect("submitted")).collect();
    let offsets: Vec<u64> = tickets[..300].iter().map(|t| t.offsets()[0].1).collect();
    assert_eq!(offsets, (0..300).collect::<Vec<_>>(), "offsets follow the batch order, the refused one takes none");
    // poll_stored on the last durable one: ready once stored, and so are all before it.
    let mut last = tickets.remove(299);
    let pos = std::future::poll_fn(|cx| last.poll_stored(cx)).await.expect("stored");
    assert!(pos > 0);
    for t in tickets {
        t.wait().await.expect("stored");
    }
    let d = s.pop(q, 1000, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d), (0..300).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(payloads(&s.pop(mem, 10, INVIS, NOW).await.expect("pop")), ["transient"]);
}

fn maintain(s: &Arc<Store>) -> polymq::store::MaintenanceReport {
    let s = s.clone();
    std::thread::spawn(move || s.run_maintenance()).join().expect("join").expect("maintenance")
}

#[tokio::test]
async fn one_unconsumed_message_does_not_pin_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let mut c = cfg(dir.path());
    c.segment_bytes = 64 * 1024;
    c.fsync = FsyncPolicy::Never;
    let s = Store::open_with_clock(c.clone(), clock.clone()).expect("open");
    let st = s.declare_queue("stream", QueueOptions { retention_bytes: Some(50_000), ..QueueOptions::stream() }).await.expect("s").id;
    let q = s.declare_queue("jobs", QueueOptions { fifo: true, ..QueueOptions::default() }).await.expect("q").id;
    for p in ["straggler-1", "straggler-2", "straggler-3"] {
        let mut m = msg(p);
        m.group = Some(Bytes::from("g"));
        s.append(m, &[q]).await.expect("append");
    }
    let payload = Bytes::from(vec![7u8; 1000]);
    for _ in 0..1000 {
        s.append(Message::new(payload.clone()), &[st]).await.expect("append");
    }
    let segs_before = s.metrics().segments;
    let first = maintain(&s);
    assert_eq!(first.segments_deleted, 0, "the stragglers pin the first segment until they are copied forward");
    let second = maintain(&s);
    assert!(second.segments_deleted >= segs_before as usize - 3, "after compaction the dead prefix goes: {second:?} of {segs_before}");
    assert!(std::fs::metadata(dir.path().join("log").join("00000000000000000000.log")).is_err());
    // The relocated messages are the same messages: order, group and content kept.
    let d = s.pop(q, 10, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d), ["straggler-1"], "FIFO group order survives the copy");
    s.ack(d[0].receipt).await.expect("ack relocated");
    s.close().expect("close");
    drop(s);
    let s = Store::open_with_clock(c, clock).expect("reopen");
    let d = s.pop(q, 10, INVIS, NOW).await.expect("pop");
    assert_eq!(payloads(&d), ["straggler-2"], "the acked copy stays acked, the rest come back once, in group order");
    s.ack(d[0].receipt).await.expect("ack");
    assert_eq!(payloads(&s.pop(q, 10, INVIS, NOW).await.expect("pop")), ["straggler-3"]);
    let r = s.read(st, 0, 10_000, u64::MAX).expect("read");
    assert_eq!(r.next_offset, 1000);
    assert!(r.messages.iter().all(|m| m.message.payload == payload));
}

/// A compaction that copies several MiB (more than it lets wait for the
/// writer at once) copies each live record once, even one indexed in two
/// queues, and keeps every queue's order and content across a restart.
#[tokio::test]
async fn a_large_compaction_copies_each_record_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let mut c = cfg(dir.path());
    c.segment_bytes = 8 * 1024 * 1024;
    c.fsync = FsyncPolicy::Never;
    let s = Store::open_with_clock(c.clone(), clock.clone()).expect("open");
    let jobs = s.declare_queue("jobs", QueueOptions::default()).await.expect("jobs").id;
    let audit = s.declare_queue("audit", QueueOptions::default()).await.expect("audit").id;
    let filler = s.declare_queue("filler", QueueOptions { retention_bytes: Some(100_000), ..QueueOptions::stream() }).await.expect("f").id;
    let body = |i: usize| format!("{i:06}-{}", "j".repeat(1000));
    s.append(msg(&body(0)), &[jobs, audit]).await.expect("append shared");
    const JOBS: usize = 1500;
    for i in 1..JOBS {
        s.append(msg(&body(i)), &[jobs]).await.expect("append job");
    }
    let pad = Bytes::from(vec![0u8; 1024]);
    for _ in 0..8 * 1024 {
        s.append(Message::new(pad.clone()), &[filler]).await.expect("append filler");
    }
    let first = maintain(&s);
    assert_eq!(first.records_copied, JOBS, "one copy per live record, the shared one once: {first:?}");
    let second = maintain(&s);
    assert!(second.segments_deleted >= 1, "the compacted segment goes: {second:?}");
    assert!(std::fs::metadata(dir.path().join("log").join("00000000000000000000.log")).is_err());
    s.close().expect("close");
    drop(s);
    let s = Store::open_with_clock(c, clock).expect("reopen");
    let mut got = Vec::new();
    loop {
        let d = s.pop(jobs, 100, INVIS, NOW).await.expect("pop jobs");
        if d.is_empty() {
            break;
        }
        got.extend(payloads(&d));
    }
    assert_eq!(got.len(), JOBS);
    assert_eq!(got, (0..JOBS).map(body).collect::<Vec<_>>(), "every job once, in order, after compaction and restart");
    assert_eq!(payloads(&s.pop(audit, 10, INVIS, NOW).await.expect("pop audit")), [body(0)]);
}

#[tokio::test]
async fn transient_queues_never_touch_the_disk_and_vanish_on_restart() {
    use polymq::route::Pattern;
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = |s: &str| Pattern::parse(s, '/', "+", "#").expect("pattern");
    {
        let (s, _) = open(dir.path());
        let t = s.declare_queue("clean-session", QueueOptions::transient()).await.expect("t").id;
        let d = s.declare_queue("durable", QueueOptions::default()).await.expect("d").id;
        s.bind("amq.topic", &mqtt("live/#"), t).await.expect("bind t");
        s.bind("amq.topic", &mqtt("both/#"), t).await.expect("bind t");
        s.bind("amq.topic", &mqtt("both/#"), d).await.expect("bind d");
        let before = s.metrics().log_bytes;
        for i in 0..100 {
            s.publish("amq.topic", &["live", "x"], true, msg(&format!("qos0-{i}"))).await.expect("publish").expect("routed");
        }
        let d1 = s.pop(t, 1, INVIS, NOW).await.expect("pop");
        s.ack(d1[0].receipt).await.expect("ack");
        assert_eq!(s.metrics().log_bytes, before, "a message only transient queues want is not written, nor are its acks");
        s.publish("amq.topic", &["both", "y"], true, msg("shared")).await.expect("publish").expect("routed");
        let grown = s.metrics().log_bytes - before;
        assert!(grown > 0 && grown < 150, "one durable target: stored once ({grown} bytes)");
        assert_eq!(s.pop(t, 1000, INVIS, NOW).await.expect("pop").len(), 100, "99 live ones + the shared one");
        assert_eq!(payloads(&s.pop(d, 10, INVIS, NOW).await.expect("pop")), ["shared"]);
        s.close().expect("close");
    }
    let (s, _) = open(dir.path());
    assert!(s.queue_id("clean-session").is_none(), "transient queues are gone after a restart");
    assert_eq!(s.route("amq.topic", &["both", "y"], true).len(), 1, "and so are their bindings");
    assert!(s.route("amq.topic", &["live", "x"], true).is_empty());
    // A new queue may take the transient queue's slot; it must not inherit the
    // old transient entries that the log still names.
    let n = s.declare_queue("newcomer", QueueOptions::default()).await.expect("n").id;
    s.close().expect("close");
    drop(s);
    let (s, _) = open(dir.path());
    assert_eq!(s.queue_id("newcomer"), Some(n));
    assert!(s.pop(n, 10, INVIS, NOW).await.expect("pop").is_empty(), "nothing of the transient queue comes back through a reused slot");
}

#[tokio::test]
async fn transient_memory_is_bounded_and_released_on_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.transient_bytes_max = 10_000;
    let s = Store::open_with_clock(c, Arc::new(ManualClock::new(T0))).expect("open");
    let t = s.declare_queue("t", QueueOptions::transient()).await.expect("t").id;
    let big = Message::new(Bytes::from(vec![1u8; 4000]));
    s.append(big.clone(), &[t]).await.expect("1st");
    s.append(big.clone(), &[t]).await.expect("2nd");
    assert!(matches!(s.append(big.clone(), &[t]).await, Err(polymq::StoreError::MemoryLimit(_))), "the third would pass the limit");
    let d = s.pop(t, 1, INVIS, NOW).await.expect("pop");
    s.ack(d[0].receipt).await.expect("ack");
    s.append(big, &[t]).await.expect("memory came back with the ack");
}

#[tokio::test]
async fn a_memory_only_message_dead_lettered_into_a_durable_queue_is_written_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (s, _) = open(dir.path());
        let opts = QueueOptions { transient: true, dead_letter: Some("dlq".into()), ..QueueOptions::default() };
        let t = s.declare_queue("t", opts).await.expect("t").id;
        s.declare_queue("dlq", QueueOptions::default()).await.expect("dlq");
        s.append(msg("rejected"), &[t]).await.expect("append");
        let d = s.pop(t, 1, INVIS, NOW).await.expect("pop");
        s.nack(d[0].receipt, NackAction::DeadLetter).await.expect("dead-letter");
        assert!(s.pop(t, 1, INVIS, NOW).await.expect("pop").is_empty());
        s.close().expect("close");
    }
    let (s, _) = open(dir.path());
    let dlq = s.queue_id("dlq").expect("dlq");
    assert_eq!(payloads(&s.pop(dlq, 10, INVIS, NOW).await.expect("pop")), ["rejected"], "durable in the DLQ after a restart");
}

#[tokio::test]
async fn interval_fsync_runs_in_the_background_and_close_syncs_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.fsync = FsyncPolicy::Interval(Duration::from_millis(10));
    // Small segments: rolls hand sealed segments to the background syncer too.
    c.segment_bytes = 64 * 1024;
    let s = Store::open(c.clone()).expect("open");
    let st = s.declare_queue("s", QueueOptions::stream()).await.expect("s").id;
    let base = s.metrics().fsyncs_total;
    let filler = "x".repeat(1000);
    for i in 0..200 {
        s.append(msg(&format!("{i}{filler}")), &[st]).await.expect("append");
    }
    assert!(s.metrics().segments >= 3, "the appends rolled segments");
    // Appends were acknowledged after their write; the fsyncs come on their own.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.metrics().fsyncs_total == base && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(s.metrics().fsyncs_total > base, "no background fsync within 5 s at a 10 ms interval");
    for i in 200..250 {
        s.append(msg(&format!("{i}{filler}")), &[st]).await.expect("append");
    }
    s.close().expect("close");
    drop(s);
    let s = Store::open(c).expect("reopen");
    assert_eq!(s.recovery().truncated_bytes, 0);
    let r = s.read(st, 0, 1000, u64::MAX).expect("read");
    assert_eq!(r.messages.len(), 250, "close fsynced what the background had not");
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest_batches_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _clock) = open(dir.path());
    let opts = QueueOptions { retention_count: Some(1), ..QueueOptions::stream() };
    let st = s.declare_queue("last-value", opts.clone()).await.expect("declare").id;
    for i in 0..5 {
        s.append(msg(&format!("v{i}")), &[st]).await.expect("append");
    }
    let rep = maintain(&s);
    assert_eq!(rep.batches_dropped, 4);
    let r = s.read(st, 0, 100, u64::MAX).expect("read");
    assert_eq!(r.messages.iter().map(|m| m.message.payload.clone()).collect::<Vec<_>>(), vec![Bytes::from("v4")]);
    assert_eq!((r.start_offset, r.next_offset), (4, 5));
    s.close().expect("close");
    drop(s);
    let (s, _clock) = open(dir.path());
    let info = s.queue_info(st).expect("the stream survives");
    assert_eq!(info.options.retention_count, Some(1), "the option is durable");
    assert_eq!(s.read(st, 4, 1, u64::MAX).expect("read").messages[0].message.payload, Bytes::from("v4"));
}

#[tokio::test]
async fn a_cancelled_long_poll_does_not_keep_its_queue_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, clock) = open(dir.path());
    let ttl = QueueOptions { idle_ttl_ms: Some(1_000), ..QueueOptions::default() };
    let q = s.declare_queue("session", ttl).await.expect("q").id;
    let st = s.declare_queue("stream", QueueOptions { idle_ttl_ms: Some(1_000), ..QueueOptions::stream() }).await.expect("s").id;
    // A consumer that disconnects mid-wait drops its pop / read future.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), s.pop(q, 1, INVIS, Duration::from_secs(30))).await;
    assert!(gave_up.is_err(), "nothing to pop: the wait is cut short by the timeout");
    let gave_up = tokio::time::timeout(Duration::from_millis(50), s.read_wait(st, 0, 1, u64::MAX, Duration::from_secs(30))).await;
    assert!(gave_up.is_err());
    clock.advance(5_000);
    let rep = maintain(&s);
    assert_eq!(rep.queues_expired, 2, "no waiter is left registered: {rep:?}");
}

#[tokio::test]
async fn altered_stream_retention_applies_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _clock) = open(dir.path());
    let st = s.declare_queue("topic/t/0", QueueOptions::stream()).await.expect("declare").id;
    for i in 0..5 {
        s.append(msg(&format!("v{i}")), &[st]).await.expect("append");
    }
    assert_eq!(maintain(&s).batches_dropped, 0, "no retention yet");
    let altered = QueueOptions { retention_count: Some(2), retention_ms: Some(60_000), ..QueueOptions::stream() };
    let info = s.alter_queue_options(st, altered.clone()).await.expect("alter");
    assert_eq!(info.options, altered);
    assert_eq!(maintain(&s).batches_dropped, 3, "the new retention is maintained");
    // Kind and durability are fixed at declare time.
    assert!(s.alter_queue_options(st, QueueOptions::default()).await.is_err());
    s.close().expect("close");
    drop(s);
    let (s, _clock) = open(dir.path());
    let info = s.queue_info(st).expect("the stream survives");
    assert_eq!(info.options, altered, "the altered options are durable");
    assert_eq!((info.start_offset, info.next_offset), (3, 5));
    // A declare with the old options now disagrees; with the new ones it matches.
    assert!(s.declare_queue("topic/t/0", QueueOptions::stream()).await.is_err());
    assert_eq!(s.declare_queue("topic/t/0", altered).await.expect("same options").id, st);
}

#[tokio::test]
async fn wait_any_wakes_on_whichever_queue_gets_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _clock) = open(dir.path());
    let a = s.declare_queue("a", QueueOptions::stream()).await.expect("a").id;
    let b = s.declare_queue("b", QueueOptions::stream()).await.expect("b").id;
    // Nothing arrives: the wait ends at its deadline, not earlier.
    let started = std::time::Instant::now();
    let ready = s.wait_any(&[a, b], Duration::from_millis(200), || s.stream_bytes_from(b, 0, 1) > 0).await.expect("wait");
    assert!(!ready && started.elapsed() >= Duration::from_millis(190));
    // A message to the second queue wakes a waiter on both, well before the deadline.
    let s2 = Arc::clone(&s);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s2.append(msg("x"), &[b]).await.expect("append");
    });
    let started = std::time::Instant::now();
    let mut checks = 0;
    let ready = s
        .wait_any(&[a, b], Duration::from_secs(20), || {
            checks += 1;
            s.stream_bytes_from(b, 0, 1) > 0
        })
        .await
        .expect("wait");
    writer.await.expect("writer");
    assert!(ready && started.elapsed() < Duration::from_secs(10));
    assert!(checks <= 4, "woken by the append, not by polling: {checks} checks");
    assert!(s.stream_bytes_from(b, 0, u64::MAX) > 0 && s.stream_bytes_from(b, 1, u64::MAX) == 0);
}

#[tokio::test]
async fn peek_shows_the_ready_head_in_pop_order_without_delivering_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (s, _clock) = open(dir.path());
    let q = s.declare_queue("peeked", QueueOptions::default()).await.expect("declare").id;
    let t = s.declare_queue("peeked-mem", QueueOptions::transient()).await.expect("declare").id;
    for body in ["a", "b", "c"] {
        s.append(msg(body), &[q, t]).await.expect("append");
    }
    let mut later = msg("later");
    later.deliver_at_ms = s.now_ms() + 60_000;
    s.append(later, &[q]).await.expect("append");
    for id in [q, t] {
        let head: Vec<(u64, Bytes)> = s.peek(id, 2).expect("peek").into_iter().map(|m| (m.offset, m.message.payload)).collect();
        assert_eq!(head, vec![(0, Bytes::from("a")), (1, Bytes::from("b"))]);
    }
    // Peeking counted no delivery and hid nothing: pop sees the same, first time.
    let got = s.pop(q, 10, Duration::from_secs(30), Duration::ZERO).await.expect("pop");
    assert_eq!(payloads(&got), ["a", "b", "c"]);
    assert!(got.iter().all(|d| d.deliveries == 1));
    // In flight and delayed messages are not ready: nothing to peek.
    assert!(s.peek(q, 10).expect("peek").is_empty());
}
