//! The core load scenarios, driving `polymq::Store` in-process: closed-loop
//! appends, rate-paced appends for latency, and pop + ack consumption.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use polymq::queue::{QueueId, QueueOptions};
use polymq::record::Message;
use polymq::{FsyncPolicy, Store, StoreConfig, StoreMetrics};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::disk::mbps;
use crate::hist::Hist;
use crate::report::{before_run, Progress, Reporter, Row, Table};
use crate::Scratch;

pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
}

#[derive(Args, Debug, Clone)]
pub struct AppendArgs {
    /// Payload sizes in bytes (comma separated); one run per size and policy.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub size: Vec<usize>,
    /// Fsync policies: always, interval=<ms>, never (comma separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_fsync, default_value = "always,interval=50,never")]
    pub fsync: Vec<FsyncPolicy>,
    /// Concurrent appender tasks; each waits for its acknowledgement before the next append.
    #[arg(long, default_value_t = 64)]
    pub appenders: usize,
    /// Seconds per run (ignored when --messages is given).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Append exactly this many messages per run instead of running for --seconds.
    #[arg(long)]
    pub messages: Option<u64>,
    /// The raw sequential write bandwidth (MB/s, from `polymq-bench disk`), to print log MB/s as a share of it.
    #[arg(long)]
    pub disk_mbps: Option<f64>,
    /// Log segment size, MiB (the store's default is 128). Rolling a
    /// segment fsyncs it, so this moves where those pauses fall.
    #[arg(long, default_value_t = 128)]
    pub segment_mib: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    /// Payload sizes in bytes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub size: Vec<usize>,
    /// Fsync policies (comma separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_fsync, default_value = "interval=50,always")]
    pub fsync: Vec<FsyncPolicy>,
    /// Appender tasks of the closed-loop run that finds the peak (as in `append`).
    #[arg(long, default_value_t = 64)]
    pub appenders: usize,
    /// Tasks of the paced run. They share one schedule, so this only bounds
    /// how many appends can be in flight at once; it must exceed rate x
    /// latency with room for the tail, or the run falls behind its schedule
    /// (sched_lag shows it) and measures a lower rate than it claims.
    #[arg(long, default_value_t = 256)]
    pub paced_appenders: usize,
    /// Seconds of the paced run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// How often the pacer releases the messages that fell due, microseconds.
    #[arg(long, default_value_t = 100)]
    pub tick_us: u64,
    /// Seconds of the closed-loop run that finds the peak.
    #[arg(long, default_value_t = 5.0)]
    pub peak_seconds: f64,
    /// Take this as the peak (msg/s) instead of measuring it.
    #[arg(long)]
    pub peak: Option<f64>,
    /// Run at exactly this rate (msg/s); no peak search.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fraction of the peak to run at.
    #[arg(long, default_value_t = 0.5)]
    pub fraction: f64,
    /// Instead of appending, make a round trip to an idle thread through the
    /// same kind of channel + oneshot handoff the log writer uses, with no
    /// I/O: the floor this machine's scheduling puts under any in-process
    /// append latency. Needs --rate.
    #[arg(long, requires = "rate")]
    pub null: bool,
    /// Log segment size, MiB (the store's default is 128). Rolling a
    /// segment fsyncs it, so this moves where those pauses fall.
    #[arg(long, default_value_t = 128)]
    pub segment_mib: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// One ack per message, each awaited (a consumer acking one by one).
    Each,
    /// One ack_many per popped batch (AMQP `multiple`, Kafka share acks).
    Batch,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopMode {
    /// Pre-fill, then consume everything.
    Drain,
    /// Producers and consumers at once for --seconds.
    Concurrent,
}

#[derive(Args, Debug, Clone)]
pub struct PopAckArgs {
    /// Messages to pre-fill for the drain run.
    #[arg(long, default_value_t = 500_000)]
    pub prefill: u64,
    /// Consumer tasks.
    #[arg(long, default_value_t = 8)]
    pub consumers: usize,
    /// Messages per pop.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, value_parser = parse_fsync, default_value = "interval=50")]
    pub fsync: FsyncPolicy,
    /// How consumers ack (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "each,batch")]
    pub ack: Vec<AckMode>,
    /// Which variants to run (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "drain,concurrent")]
    pub mode: Vec<PopMode>,
    /// Producer tasks in the concurrent variant.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Seconds of the concurrent variant.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// What one closed-loop append run measured.
pub struct AppendResult {
    pub msgs: u64,
    pub elapsed: Duration,
    pub hist: Hist,
    pub delta: StoreMetrics,
}

impl AppendResult {
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn open_store(dir: &std::path::Path, fsync: FsyncPolicy, segment_mib: Option<u64>) -> Result<Arc<Store>> {
    let mut cfg = StoreConfig::new(dir);
    cfg.fsync = fsync;
    if let Some(m) = segment_mib {
        cfg.segment_bytes = m * 1024 * 1024;
    }
    Store::open(cfg).with_context(|| format!("opening a store in {}", dir.display()))
}

/// Closes outside the runtime: close() blocks until the writer has synced.
pub fn close_store(store: Arc<Store>) -> Result<()> {
    store.close().context("closing the store")?;
    drop(store);
    Ok(())
}

fn delta(a: &StoreMetrics, b: &StoreMetrics) -> StoreMetrics {
    StoreMetrics {
        appends_total: b.appends_total - a.appends_total,
        append_bytes_total: b.append_bytes_total - a.append_bytes_total,
        write_batches_total: b.write_batches_total - a.write_batches_total,
        fsyncs_total: b.fsyncs_total - a.fsyncs_total,
        appends_refused_no_space_total: b.appends_refused_no_space_total - a.appends_refused_no_space_total,
        log_bytes: b.log_bytes,
        segments: b.segments,
        queues: b.queues,
        messages_ready: b.messages_ready,
        messages_inflight: b.messages_inflight,
    }
}

/// A payload whose first 8 bytes carry a send time (ns since `epoch`), for end-to-end latency.
fn stamped(size: usize, epoch: Instant) -> Bytes {
    let mut v = vec![0x5Au8; size.max(8)];
    v[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
    Bytes::from(v)
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    payload.get(..8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    })
}

/// `appenders` tasks each append, wait for the ack, record the latency, and
/// go again, until `dur` passes or `messages` are sent.
async fn closed_loop(
    store: Arc<Store>,
    q: QueueId,
    size: usize,
    appenders: usize,
    dur: Duration,
    messages: Option<u64>,
    done: Arc<AtomicU64>,
) -> Result<(Hist, Duration)> {
    // One shared buffer: appends clone the Bytes handle, as a protocol
    // handler passing its frame's payload would (no per-message copy here;
    // the writer copies small payloads into its batch buffer).
    let payload = Bytes::from(vec![0x5Au8; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(messages.unwrap_or(u64::MAX)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..appenders {
        let (store, payload, stop, budget, done) = (store.clone(), payload.clone(), stop.clone(), budget.clone(), done.clone());
        tasks.spawn(async move {
            let mut h = Hist::default();
            let targets = [q];
            while !stop.load(Ordering::Relaxed) && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok() {
                let t = Instant::now();
                store.append(Message::new(payload.clone()), &targets).await?;
                h.record(t.elapsed().as_nanos() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(h)
        });
    }
    if messages.is_none() {
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut h = Hist::default();
    while let Some(r) = tasks.join_next().await {
        h.merge(&r.context("appender task panicked")??);
    }
    Ok((h, start.elapsed()))
}

/// One closed-loop run on a fresh store.
#[allow(clippy::too_many_arguments)]
fn append_run(
    rt: &Runtime,
    scratch: &Scratch,
    fsync: FsyncPolicy,
    size: usize,
    appenders: usize,
    dur: Duration,
    messages: Option<u64>,
    segment_mib: u64,
) -> Result<AppendResult> {
    let label = format!("append fsync={fsync} size={size}");
    let dir = scratch.fresh(&label)?;
    let store = open_store(&dir, fsync, Some(segment_mib))?;
    let done = Arc::new(AtomicU64::new(0));
    let r = rt.block_on(async {
        let q = store.declare_queue("bench-stream", QueueOptions::stream()).await?.id;
        let m0 = store.metrics();
        let _p = Progress::start(label.clone(), "msg", done.clone());
        let (hist, elapsed) = closed_loop(store.clone(), q, size, appenders, dur, messages, done.clone()).await?;
        let m1 = store.metrics();
        anyhow::Ok(AppendResult { msgs: hist.count(), elapsed, hist, delta: delta(&m0, &m1) })
    })?;
    close_store(store)?;
    scratch.discard(&dir);
    Ok(r)
}

fn latency_cols(row: Row, h: &Hist) -> Row {
    row.us("mean_us", h.mean())
        .us("p50_us", h.quantile(0.5))
        .us("p99_us", h.quantile(0.99))
        .us("p99.9_us", h.quantile(0.999))
        .us("p99.99_us", h.quantile(0.9999))
        .us("max_us", h.max())
}

pub fn append(rt: &Runtime, rep: &Reporter, scratch: &Scratch, a: &AppendArgs) -> Result<Vec<AppendResult>> {
    rep.facts(
        "append settings",
        &Row::new()
            .put("queue", "one stream queue")
            .put("appenders", a.appenders)
            .put("run", a.messages.map(|m| format!("{m} messages")).unwrap_or_else(|| format!("{} s", a.seconds)))
            .put("latency", "per message, submit to acknowledgement (append().await)")
            .put("units", "MB = 10^6 bytes; log MB/s counts frame + record header + payload"),
    );
    let mut table = Table::new("append: closed loop, one stream queue");
    let mut out = Vec::new();
    for &fsync in &a.fsync {
        for &size in &a.size {
            let pre = before_run();
            let r = append_run(rt, scratch, fsync, size, a.appenders, Duration::from_secs_f64(a.seconds), a.messages, a.segment_mib)?;
            let secs = r.elapsed.as_secs_f64();
            let log_mbps = mbps(r.delta.append_bytes_total, r.elapsed);
            let mut row = Row::new()
                .put("fsync", fsync.to_string())
                .put("size", size)
                .put("msgs", r.msgs)
                .num("msg/s", r.rate(), 0)
                .num("payload_MB/s", mbps(r.msgs * size as u64, r.elapsed), 1)
                .num("log_MB/s", log_mbps, 1);
            if let Some(d) = a.disk_mbps {
                row = row.num("%disk", 100.0 * log_mbps / d, 1);
            }
            row = row
                .num("batches/s", r.delta.write_batches_total as f64 / secs, 0)
                .num("msg/batch", r.delta.appends_total as f64 / r.delta.write_batches_total.max(1) as f64, 1)
                .num("fsyncs/s", r.delta.fsyncs_total as f64 / secs, 0);
            row = latency_cols(row, &r.hist).pre(pre);
            rep.row(&mut table, row);
            out.push(r);
        }
    }
    rep.flush_table(&mut table);
    Ok(out)
}

/// What a paced run drives: the store, or the null round trip (see `--null`).
#[derive(Clone)]
pub enum Target {
    Store(Arc<Store>, QueueId),
    Null(tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>),
}

/// The null target's thread: like the log writer, it blocks on the channel,
/// takes everything waiting as one batch and completes each oneshot.
fn null_target() -> Result<Target> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(16 * 1024);
    std::thread::Builder::new()
        .name("bench-null-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(1024);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < 1024 {
                    match rx.try_recv() {
                        Ok(d) => batch.push(d),
                        Err(_) => break,
                    }
                }
                for d in batch.drain(..) {
                    let _ = d.send(());
                }
            }
        })
        .context("spawning the null writer")?;
    Ok(Target::Null(tx))
}

/// Appends at a fixed rate. A pacer thread wakes every `tick` and releases
/// permits for every message due by then (t0 + i/rate); appender tasks take
/// one permit per append. Latency is from taking the permit to the ack.
///
/// Why a thread and not `tokio::time::sleep_until` per message: tokio's
/// timer ticks at 1 ms, so every message due within a millisecond would be
/// submitted at once, and at 250k msg/s the last of each 250-message burst
/// waits for the other 249: the generator, not the store, would set the
/// tail. A 100 us tick spreads the load like many independent clients,
/// at the cost of one thread waking 10k times a second.
///
/// `backlog_max` is the most permits still untaken when the pacer came
/// back: above a few, the appenders could not keep up with the schedule
/// and the rate the row claims was not really offered (coordinated omission).
/// What a paced run measured.
pub struct Paced {
    /// From taking the release to the ack (the store's service time).
    pub service: Hist,
    /// From the message's scheduled time (t0 + i/rate) to the ack: includes
    /// any wait for the pacer's tick or for a free appender, so a stall
    /// counts for every message scheduled during it, not only for the few
    /// in flight (no coordinated omission).
    pub scheduled: Hist,
    pub backlog_max: u64,
    pub elapsed: Duration,
}

pub async fn paced(
    target: Target,
    size: usize,
    appenders: usize,
    rate: f64,
    dur: Duration,
    tick: Duration,
    done: Arc<AtomicU64>,
) -> Result<Paced> {
    let total = (rate * dur.as_secs_f64()).ceil() as u64;
    let payload = Bytes::from(vec![0x5Au8; size]);
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let taken = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let pacer = {
        let permits = permits.clone();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                let mut released = 0u64;
                let mut backlog_max = 0u64;
                while released < total {
                    std::thread::sleep(tick);
                    let due = ((t0.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
                    if due > released {
                        backlog_max = backlog_max.max(permits.available_permits() as u64);
                        permits.add_permits((due - released) as usize);
                        released = due;
                    }
                }
                backlog_max
            })
            .context("spawning the pacer")?
    };
    let mut tasks = JoinSet::new();
    for _ in 0..appenders {
        let (target, payload, done, permits, taken) = (target.clone(), payload.clone(), done.clone(), permits.clone(), taken.clone());
        tasks.spawn(async move {
            let mut h = Hist::default();
            let mut sched = Hist::default();
            // Exactly `total` permits are released and exactly `total` taken;
            // the semaphore is FIFO, so the i-th taker gets message i.
            loop {
                let i = taken.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                permits.acquire().await?.forget();
                let t = Instant::now();
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                match &target {
                    Target::Store(store, q) => drop(store.append(Message::new(payload.clone()), &[*q]).await?),
                    Target::Null(tx) => {
                        let (d, r) = tokio::sync::oneshot::channel();
                        tx.send(d).await.map_err(|_| anyhow::anyhow!("null writer gone"))?;
                        r.await?;
                    }
                }
                let end = Instant::now();
                h.record((end - t).as_nanos() as u64);
                sched.record(end.saturating_duration_since(due).as_nanos() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((h, sched))
        });
    }
    let mut service = Hist::default();
    let mut scheduled = Hist::default();
    while let Some(r) = tasks.join_next().await {
        let (a, b) = r.context("appender task panicked")??;
        service.merge(&a);
        scheduled.merge(&b);
    }
    let backlog_max = pacer.join().map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;
    Ok(Paced { service, scheduled, backlog_max, elapsed: t0.elapsed() })
}

pub fn latency(rt: &Runtime, rep: &Reporter, scratch: &Scratch, a: &LatencyArgs) -> Result<()> {
    rep.facts(
        "append-latency settings",
        &Row::new()
            .put("queue", "one stream queue")
            .put("peak_appenders", a.appenders)
            .put("paced_appenders", a.paced_appenders)
            .put("peak", a.peak.map(|p| format!("given: {p} msg/s")).unwrap_or_else(|| format!("closed loop for {} s, {} appenders", a.peak_seconds, a.appenders)))
            .put("paced run", format!("{} s at {} of peak{}", a.seconds, a.fraction, a.rate.map(|r| format!(" (overridden: {r} msg/s)")).unwrap_or_default()))
            .put("pacing", format!("a pacer thread releases due messages every {} us; backlog_max = most released messages not yet taken by an appender", a.tick_us))
            .put("latency", "p* = service time, from taking the release to the ack; sched_* = from the message's scheduled time to the ack (counts waits behind a stall; the goal is judged on this)")
            .put("goal", "p99.99 < 1 ms at half of peak"),
    );
    let mut table = Table::new("append-latency: paced appends at a fraction of peak");
    for &fsync in &a.fsync {
        for &size in &a.size {
            let peak = match (a.rate, a.peak) {
                (Some(_), _) => None,
                (None, Some(p)) => Some(p),
                (None, None) => {
                    before_run();
                    Some(
                        append_run(rt, scratch, fsync, size, a.appenders, Duration::from_secs_f64(a.peak_seconds), None, a.segment_mib)?
                            .rate(),
                    )
                }
            };
            let rate = a.rate.unwrap_or_else(|| peak.unwrap_or(0.0) * a.fraction).max(1.0);
            let pre = before_run();
            let label = format!("paced fsync={fsync} size={size} rate={rate:.0}");
            let done = Arc::new(AtomicU64::new(0));
            let dur = Duration::from_secs_f64(a.seconds);
            let p = if a.null {
                let _p = Progress::start("paced null round trip".into(), "msg", done.clone());
                let t = null_target()?;
                rt.block_on(paced(t, size, a.paced_appenders, rate, dur, Duration::from_micros(a.tick_us), done.clone()))?
            } else {
                let dir = scratch.fresh(&label)?;
                let store = open_store(&dir, fsync, Some(a.segment_mib))?;
                let r = rt.block_on(async {
                    let q = store.declare_queue("bench-stream", QueueOptions::stream()).await?.id;
                    let _p = Progress::start(label.clone(), "msg", done.clone());
                    paced(
                        Target::Store(store.clone(), q),
                        size,
                        a.paced_appenders,
                        rate,
                        dur,
                        Duration::from_micros(a.tick_us),
                        done.clone(),
                    )
                    .await
                })?;
                close_store(store)?;
                scratch.discard(&dir);
                r
            };
            let (h, elapsed) = (&p.service, p.elapsed);
            let p9999 = p.scheduled.quantile(0.9999);
            let mut row = Row::new().put("fsync", if a.null { "null round trip".to_string() } else { fsync.to_string() }).put("size", size);
            row = match peak {
                Some(p) => row.num("peak_msg/s", p, 0),
                None => row.put("peak_msg/s", "-"),
            };
            row =
                row.num("target_msg/s", rate, 0).num("achieved_msg/s", h.count() as f64 / elapsed.as_secs_f64(), 0).put("msgs", h.count());
            row = latency_cols(row, h)
                .us("sched_p99_us", p.scheduled.quantile(0.99))
                .us("sched_p99.99_us", p9999)
                .us("sched_max_us", p.scheduled.max())
                .put("p99.99<1ms", if p9999 < 1_000_000 { "yes" } else { "NO" })
                .put("backlog_max", p.backlog_max)
                .pre(pre);
            rep.row(&mut table, row);
        }
    }
    rep.flush_table(&mut table);
    Ok(())
}

pub fn pop_ack(rt: &Runtime, rep: &Reporter, scratch: &Scratch, a: &PopAckArgs) -> Result<()> {
    rep.facts(
        "pop-ack settings",
        &Row::new()
            .put("queue", "one queue (pop/ack)")
            .put("consumers", a.consumers)
            .put("pop", format!("max={}, invisible=30s", a.batch))
            .put("size", a.size)
            .put("fsync", a.fsync.to_string())
            .put("drain", format!("pre-fill {} messages, consumers pop with wait=0 until empty", a.prefill))
            .put(
                "concurrent",
                format!("{} producers (closed loop) + consumers (wait=50ms) for {} s; e2e = append start to pop", a.producers, a.seconds),
            ),
    );
    let mut table = Table::new("pop-ack: consumption by message");
    for &mode in &a.mode {
        for &ack in &a.ack {
            let pre = before_run();
            let row = match mode {
                PopMode::Drain => drain(rt, scratch, a, ack)?,
                PopMode::Concurrent => concurrent(rt, scratch, a, ack)?,
            };
            rep.row(&mut table, row.pre(pre));
        }
    }
    rep.flush_table(&mut table);
    Ok(())
}

/// Pops a batch and acks it the chosen way; returns the deliveries' payloads' stamps.
async fn consume_once(store: &Store, q: QueueId, batch: usize, ack: AckMode, wait: Duration) -> Result<Vec<Option<u64>>> {
    let ds = store.pop(q, batch, Duration::from_secs(30), wait).await?;
    let stamps = ds.iter().map(|d| stamp_of(&d.message.payload)).collect();
    match ack {
        AckMode::Each => {
            for d in &ds {
                store.ack(d.receipt).await?;
            }
        }
        AckMode::Batch => {
            let receipts: Vec<_> = ds.iter().map(|d| d.receipt).collect();
            if !receipts.is_empty() {
                let stale = store.ack_many(&receipts).await?;
                anyhow::ensure!(stale == 0, "{stale} receipts went stale within 30 s");
            }
        }
    }
    Ok(stamps)
}

fn ack_name(a: AckMode) -> &'static str {
    match a {
        AckMode::Each => "each",
        AckMode::Batch => "batch",
    }
}

fn drain(rt: &Runtime, scratch: &Scratch, a: &PopAckArgs, ack: AckMode) -> Result<Row> {
    let dir = scratch.fresh("pop-drain")?;
    let store = open_store(&dir, a.fsync, None)?;
    let done = Arc::new(AtomicU64::new(0));
    let row = rt.block_on(async {
        let q = store.declare_queue("bench-queue", QueueOptions::default()).await?.id;
        let fill = {
            let _p = Progress::start("pop-ack prefill".into(), "msg", done.clone());
            closed_loop(store.clone(), q, a.size, 64, Duration::ZERO, Some(a.prefill), done.clone()).await?
        };
        let acked = Arc::new(AtomicU64::new(0));
        let _p = Progress::start(format!("pop-ack drain ack={}", ack_name(ack)), "msg", acked.clone());
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..a.consumers {
            let (store, acked, batch) = (store.clone(), acked.clone(), a.batch);
            tasks.spawn(async move {
                loop {
                    let n = consume_once(&store, q, batch, ack, Duration::ZERO).await?.len();
                    if n == 0 {
                        break;
                    }
                    acked.fetch_add(n as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.context("consumer task panicked")??;
        }
        let elapsed = start.elapsed();
        let n = acked.load(Ordering::Relaxed);
        let m = store.metrics();
        anyhow::ensure!(n == a.prefill, "drained {n} of {} messages", a.prefill);
        anyhow::ensure!(
            m.messages_ready == 0 && m.messages_inflight == 0,
            "queue not empty after drain: {} ready, {} in flight",
            m.messages_ready,
            m.messages_inflight
        );
        anyhow::Ok(
            Row::new()
                .put("mode", "drain")
                .put("ack", ack_name(ack))
                .put("consumers", a.consumers)
                .num("fill_msg/s", fill.0.count() as f64 / fill.1.as_secs_f64(), 0)
                .put("msgs", n)
                .num("consume_msg/s", n as f64 / elapsed.as_secs_f64(), 0),
        )
    })?;
    close_store(store)?;
    scratch.discard(&dir);
    Ok(row)
}

fn concurrent(rt: &Runtime, scratch: &Scratch, a: &PopAckArgs, ack: AckMode) -> Result<Row> {
    let dir = scratch.fresh("pop-concurrent")?;
    let store = open_store(&dir, a.fsync, None)?;
    let acked = Arc::new(AtomicU64::new(0));
    let row = rt.block_on(async {
        let q = store.declare_queue("bench-queue", QueueOptions::default()).await?.id;
        let _p = Progress::start(format!("pop-ack concurrent ack={}", ack_name(ack)), "consumed", acked.clone());
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let mut producers = JoinSet::new();
        for _ in 0..a.producers {
            let (store, stop, produced, size) = (store.clone(), stop.clone(), produced.clone(), a.size);
            producers.spawn(async move {
                let targets = [q];
                while !stop.load(Ordering::Relaxed) {
                    store.append(Message::new(stamped(size, epoch)), &targets).await?;
                    produced.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        let mut consumers = JoinSet::new();
        for _ in 0..a.consumers {
            let (store, stop, acked, batch) = (store.clone(), stop.clone(), acked.clone(), a.batch);
            consumers.spawn(async move {
                let mut e2e = Hist::default();
                while !stop.load(Ordering::Relaxed) {
                    let stamps = consume_once(&store, q, batch, ack, Duration::from_millis(50)).await?;
                    let now = epoch.elapsed().as_nanos() as u64;
                    acked.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                    for s in stamps.into_iter().flatten() {
                        e2e.record(now.saturating_sub(s));
                    }
                }
                anyhow::Ok(e2e)
            });
        }
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = epoch.elapsed();
        while let Some(r) = producers.join_next().await {
            r.context("producer task panicked")??;
        }
        let mut e2e = Hist::default();
        while let Some(r) = consumers.join_next().await {
            e2e.merge(&r.context("consumer task panicked")??);
        }
        let m = store.metrics();
        let secs = elapsed.as_secs_f64();
        let p = produced.load(Ordering::Relaxed);
        anyhow::ensure!(p > 0 && e2e.count() > 0, "concurrent run moved no message (produced {p}, consumed {})", e2e.count());
        let row = Row::new()
            .put("mode", "concurrent")
            .put("ack", ack_name(ack))
            .put("consumers", a.consumers)
            .put("producers", a.producers)
            .num("produce_msg/s", p as f64 / secs, 0)
            .put("msgs", e2e.count())
            .num("consume_msg/s", e2e.count() as f64 / secs, 0)
            .put("backlog_end", m.messages_ready + m.messages_inflight)
            .us("e2e_p50_us", e2e.quantile(0.5))
            .us("e2e_p99_us", e2e.quantile(0.99))
            .us("e2e_p99.9_us", e2e.quantile(0.999));
        anyhow::Ok(row)
    })?;
    close_store(store)?;
    scratch.discard(&dir);
    Ok(row)
}
