//! AMQP 0-9-1 scenarios over real sockets, against any broker at
//! `--amqp amqp://user:pass@host:port/vhost` (polymq, RabbitMQ, ...), driven by
//! the `lapin` client.
//!
//! - `durable`: N durable queues (`--queues 1,100`), persistent messages
//!   (delivery_mode 2) published to the default exchange with publisher
//!   confirms (each publisher keeps at most `--confirm-window` publishes
//!   unconfirmed), consumed with manual acks under a prefetch. At least one
//!   publisher and one consumer per queue; the channels are spread over
//!   `--connections` connections per side.
//! - `fan-out`: one publisher to a durable topic exchange, K durable queues
//!   bound to it with a wildcard key (`<prefix>.*`), one consumer each.
//!
//! Each message carries its send time, sequence number and publisher in the
//! first 20 bytes of its payload (the same stamp as the MQTT scenarios), so
//! consumers measure end-to-end latency: publish call (rate mode: scheduled send
//! time) to delivery. Publishing runs flat out (`--rate 0`: as fast as the
//! confirm window allows) or on a fixed schedule (`--rate R` msg/s in total; a
//! late message keeps its scheduled time).
//!
//! `amqp-queues` declares N durable queues on one connection, over many
//! channels at once so that the round trip does not set the rate, and reports
//! the declare rate and the broker's memory per queue; then deletes them.
//!
//! Every run uses names under `pmqb-<run id>`, and deletes its queues and
//! exchange afterwards, so runs never see each other's messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::hist::Hist;
use crate::mqtt::{
    await_deliveries, epoch, latency_cols, mib, now_ns, payload, probe_cols, q_ms, rss, run_clock, run_id, unstamp, Probe, STAMP,
};
use crate::report::{before_run, Progress, Reporter, Row, Table};

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N durable queues, publishers with confirms -> consumers with acks (one queue each at least).
    Durable,
    /// 1 publisher -> topic exchange -> K queues bound with a wildcard -> K consumers.
    FanOut,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Durable => "durable",
            Shape::FanOut => "fan-out",
        }
    }
}

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Args, Debug, Clone)]
pub struct AmqpArgs {
    /// The broker: amqp://user:pass@host:port/vhost (vhost `/` is `%2f`).
    #[arg(long, default_value = DEFAULT_URL, env = "POLYMQ_BENCH_AMQP")]
    pub amqp: String,
    /// Name of the broker in the rows (default: host:port of the URL).
    #[arg(long)]
    pub label: Option<String>,
    /// The broker's process id: its CPU (utime+stime) and RSS are read from /proc during each run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Scenarios (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "durable,fan-out")]
    pub scenario: Vec<Shape>,
    /// Queues of the durable scenario (comma separated: one run per count).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub queues: Vec<usize>,
    /// Queues bound to the topic exchange in fan-out (one consumer each).
    #[arg(long, default_value_t = 8)]
    pub fanout: usize,
    /// Publishers of the durable scenario (raised to the queue count: one per queue at least).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Consumers of the durable scenario (raised to the queue count: one per queue at least).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Connections per side (publishers' and consumers'); each publisher and
    /// consumer has a channel of its own on one of them (round robin).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Payload bytes (at least 20: the send time, publisher and sequence number).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Publish rates in msg/s, all publishers together (comma separated); 0 = as fast as
    /// the confirm window allows. One run per rate.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub rate: Vec<f64>,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Most publishes a publisher has unconfirmed (publisher confirms are always on).
    #[arg(long, default_value_t = 64)]
    pub confirm_window: usize,
    /// basic.qos prefetch count of each consumer's channel.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Ack every N-th delivery with `multiple` (1: one basic.ack per message).
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u32,
    /// After publishing stops, wait up to this many seconds for confirms and deliveries still under way.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
}

#[derive(Args, Debug, Clone)]
pub struct QueuesArgs {
    /// The broker: amqp://user:pass@host:port/vhost.
    #[arg(long, default_value = DEFAULT_URL, env = "POLYMQ_BENCH_AMQP")]
    pub amqp: String,
    /// Name of the broker in the rows (default: host:port of the URL).
    #[arg(long)]
    pub label: Option<String>,
    /// The broker's process id: its RSS before and after tells the memory per queue.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Durable queues to declare (comma separated: one run per count).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub count: Vec<usize>,
    /// Channels of the one connection; each has one queue.declare in flight at a time.
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Leave the queues in the broker (by default they are deleted after the run, and the delete rate is reported).
    #[arg(long)]
    pub keep_queues: bool,
}

/// `host:port` of an AMQP URL, without the credentials (for labels and notes).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(Duration::from_secs(15), Connection::connect(url, props))
        .await
        .with_context(|| format!("no AMQP connection to {} within 15 s", host_of(url)))?
        .with_context(|| format!("AMQP connect to {}", host_of(url)))
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

#[derive(Default)]
pub(crate) struct Counters {
    /// basic.publish frames handed to the socket.
    pub(crate) published: AtomicU64,
    /// Publishes the broker confirmed (basic.ack) and refused (basic.nack).
    pub(crate) confirmed: AtomicU64,
    pub(crate) nacked: AtomicU64,
    /// Deliveries to consumers (shared with the progress line).
    received: Arc<AtomicU64>,
    redelivered: AtomicU64,
    /// Deliveries whose sequence number was not above the last one the consumer saw from that publisher.
    out_of_order: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) last_published_ns: AtomicU64,
    pub(crate) last_confirmed_ns: AtomicU64,
    last_received_ns: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(what);
        }
    }
}

/// Where a publisher sends: an exchange and a routing key.
pub(crate) struct Target {
    pub(crate) exchange: String,
    pub(crate) key: String,
}

/// One persistent publish and its confirm. The sequence number and (flat out)
/// the send time are taken when the future is first polled, which is also
/// when lapin queues its frames, so a publisher's sequence numbers go out in
/// order however many publishes are in flight.
///
/// It borrows everything from its publisher: cloning a lapin `Channel` per
/// message cost the load generator about 7 % of its CPU.
async fn publish_one(ch: &Channel, t: &Target, size: usize, index: u32, scheduled_ns: u64, seq: &AtomicU64, ctr: &Counters) -> Result<u64> {
    let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
    let t0 = now_ns();
    let body = payload(size, if scheduled_ns == 0 { t0 } else { scheduled_ns }, s, index);
    let props = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish(t.exchange.as_str().into(), t.key.as_str().into(), BasicPublishOptions::default(), &body, props)
        .await
        .context("basic.publish")?;
    ctr.published.fetch_add(1, Ordering::Relaxed);
    ctr.last_published_ns.fetch_max(now_ns(), Ordering::Relaxed);
    match confirm.await.context("waiting for the confirm")? {
        Confirmation::Ack(_) => {
            let now = now_ns();
            ctr.confirmed.fetch_add(1, Ordering::Relaxed);
            ctr.last_confirmed_ns.fetch_max(now, Ordering::Relaxed);
            Ok(now.saturating_sub(t0))
        }
        Confirmation::Nack(_) => {
            ctr.nacked.fetch_add(1, Ordering::Relaxed);
            bail!("the broker refused a publish (basic.nack)")
        }
        Confirmation::NotRequested => bail!("the channel is not in confirm mode"),
    }
}

pub(crate) struct Pub {
    ch: Channel,
    target: Target,
    index: u32,
    /// msg/s of this publisher (0 = flat out).
    rate: f64,
}

/// Opens a channel in confirm mode for each target, on the connections in
/// turn; publisher i sends `rate_each` msg/s (0: flat out) to target i.
pub(crate) async fn open_publishers(conns: &[Connection], targets: Vec<Target>, rate_each: f64) -> Result<Vec<Pub>> {
    let mut pubs = Vec::new();
    for (i, target) in targets.into_iter().enumerate() {
        let ch = conns[i % conns.len()].create_channel().await.context("channel.open (publisher)")?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.context("confirm.select")?;
        pubs.push(Pub { ch, target, index: i as u32, rate: rate_each });
    }
    Ok(pubs)
}

/// Publishes with every publisher for `seconds` (see `run_publisher`) and
/// waits for their confirms (at most `drain` past the end). Returns the
/// publish-to-confirm latencies and the start of the run on the stamps' clock.
pub(crate) async fn publish_all(
    pubs: Vec<Pub>,
    size: usize,
    window: usize,
    seconds: f64,
    drain: Duration,
    ctr: &Arc<Counters>,
) -> Result<(Hist, u64)> {
    let (start, t0_ns, until) = run_clock(seconds);
    let mut tasks = JoinSet::new();
    for p in pubs {
        tasks.spawn(run_publisher(p, size, window, (start, t0_ns), until, until + drain, ctr.clone()));
    }
    let mut confirm = Hist::default();
    while let Some(r) = tasks.join_next().await {
        confirm.merge(&r.context("publisher panicked")?);
    }
    Ok((confirm, t0_ns))
}

/// Publishes until `until` with at most `window` publishes unconfirmed, then
/// waits (until `drain_end`) for the rest of the confirms. Returns the
/// publish-to-confirm latencies.
async fn run_publisher(
    p: Pub,
    size: usize,
    window: usize,
    start: (tokio::time::Instant, u64),
    until: tokio::time::Instant,
    drain_end: tokio::time::Instant,
    ctr: Arc<Counters>,
) -> Hist {
    let (start, start_ns) = start;
    let mut h = Hist::default();
    let seq = AtomicU64::new(0);
    let mut inflight = FuturesUnordered::new();
    let mut k = 0u64; // messages put in flight so far
    let mut publishing = true;
    let due = |k: u64| start + Duration::from_secs_f64(k as f64 / p.rate);
    loop {
        // Top up the window with what is due (flat out: everything).
        while publishing && inflight.len() < window.max(1) {
            let now = tokio::time::Instant::now();
            let scheduled_ns = if p.rate > 0.0 {
                // Message k is due at start + k/rate and carries that time, even if
                // it goes out late (a full window, a slow broker).
                let d = due(k);
                if d >= until {
                    publishing = false;
                    break;
                }
                if d > now {
                    break;
                }
                start_ns + (d - start).as_nanos() as u64
            } else {
                if now >= until {
                    publishing = false;
                    break;
                }
                0
            };
            k += 1;
            inflight.push(publish_one(&p.ch, &p.target, size, p.index, scheduled_ns, &seq, &ctr));
        }
        if !publishing && inflight.is_empty() {
            break;
        }
        let next_due = (publishing && p.rate > 0.0 && inflight.len() < window.max(1)).then(|| due(k));
        tokio::select! {
            r = inflight.next(), if !inflight.is_empty() => match r {
                Some(Ok(ns)) => h.record(ns),
                Some(Err(e)) => {
                    ctr.error(format!("publisher {}: {e:#}", p.index));
                    // A broken channel fails every publish in flight; stop publishing.
                    publishing = false;
                }
                None => {}
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or(until)), if next_due.is_some() => {}
            _ = tokio::time::sleep_until(drain_end), if !publishing => break,
            // Flat out, a full window waits for a confirm; past `until` stop topping up.
            _ = tokio::time::sleep_until(until), if publishing && p.rate == 0.0 => {}
        }
    }
    h
}

async fn ack(ch: &Channel, tag: u64, multiple: bool) -> Result<()> {
    ch.basic_ack(tag, BasicAckOptions { multiple }).await.context("basic.ack")
}

/// Takes deliveries, records their latency, acks them (every `multi_ack`-th
/// with `multiple`), until told to stop; then acks what is left.
async fn run_consumer(
    ch: Channel,
    mut consumer: Consumer,
    multi_ack: u32,
    publishers: usize,
    ctr: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Hist {
    let mut h = Hist::default();
    let mut last_seq = vec![0u64; publishers.max(1)];
    // Acks are sent in order: a future queues its frame when first polled, and
    // FuturesUnordered first-polls in push order.
    let mut acks = FuturesUnordered::new();
    let (mut unacked, mut last_tag) = (0u32, 0u64);
    let multiple = multi_ack > 1;
    loop {
        tokio::select! {
            biased;
            Some(r) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = r {
                    ctr.error(format!("consumer: {e:#}"));
                    break;
                }
            }
            d = consumer.next() => match d {
                Some(Ok(d)) => {
                    let now = now_ns();
                    match unstamp(&d.data) {
                        Some((sent, seq, publisher)) => {
                            h.record(now.saturating_sub(sent));
                            if let Some(l) = last_seq.get_mut(publisher as usize) {
                                if seq <= *l && !d.redelivered {
                                    ctr.out_of_order.fetch_add(1, Ordering::Relaxed);
                                }
                                *l = (*l).max(seq);
                            }
                        }
                        None => ctr.error("a delivery without the bench's stamp".into()),
                    }
                    if d.redelivered {
                        ctr.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    ctr.received.fetch_add(1, Ordering::Relaxed);
                    ctr.last_received_ns.fetch_max(now, Ordering::Relaxed);
                    unacked += 1;
                    last_tag = d.delivery_tag;
                    if unacked >= multi_ack.max(1) {
                        acks.push(ack(&ch, last_tag, multiple));
                        unacked = 0;
                    }
                }
                Some(Err(e)) => {
                    if !*stop.borrow() {
                        ctr.error(format!("consumer: {e}"));
                    }
                    break;
                }
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    if unacked > 0 {
        acks.push(ack(&ch, last_tag, multiple));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(r) = acks.next().await {
            if let Err(e) = r {
                ctr.error(format!("consumer: {e:#}"));
            }
        }
    })
    .await;
    h
}

pub struct RunResult {
    pub shape: Shape,
    pub queues: usize,
    pub rate: f64,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub received: u64,
    pub expected: u64,
    pub errors: u64,
}

struct RunSpec<'a> {
    url: &'a str,
    shape: Shape,
    queues: usize,
    publishers: usize,
    consumers: usize,
    connections: usize,
    size: usize,
    rate: f64,
    seconds: f64,
    window: usize,
    prefetch: u16,
    multi_ack: u32,
    drain: Duration,
    run_id: String,
}

struct Measured {
    e2e: Hist,
    confirm: Hist,
    expected: u64,
    setup: Duration,
    t0_ns: u64,
}

/// Sets up the topology and clients of one run, publishes, drains, measures, cleans up.
async fn one_run(spec: &RunSpec<'_>, ctr: Arc<Counters>) -> Result<Measured> {
    let _ = epoch();
    let t_setup = Instant::now();
    let prefix = format!("pmqb-{}", spec.run_id);
    let conns = spec.connections.max(1);
    let mut pub_conns = Vec::new();
    let mut sub_conns = Vec::new();
    for i in 0..conns {
        pub_conns.push(connect(spec.url, &format!("{prefix}-pub-{i}")).await?);
        sub_conns.push(connect(spec.url, &format!("{prefix}-sub-{i}")).await?);
    }
    let admin = sub_conns[0].create_channel().await.context("channel.open")?;

    // Topology: queue names, what each publisher targets, which queue each consumer reads.
    let exchange = format!("{prefix}-topic");
    let (queue_names, targets, consumer_queues): (Vec<String>, Vec<Target>, Vec<usize>) = match spec.shape {
        Shape::Durable => {
            let n = spec.queues.max(1);
            let names: Vec<String> = (0..n).map(|i| format!("{prefix}-q{i}")).collect();
            let pubs = spec.publishers.max(n);
            let subs = spec.consumers.max(n);
            let targets = (0..pubs).map(|i| Target { exchange: String::new(), key: names[i % n].clone() }).collect();
            (names, targets, (0..subs).map(|i| i % n).collect())
        }
        Shape::FanOut => {
            let n = spec.queues.max(1);
            let names: Vec<String> = (0..n).map(|i| format!("{prefix}-f{i}")).collect();
            (names, vec![Target { exchange: exchange.clone(), key: format!("{prefix}.fan.data") }], (0..n).collect())
        }
    };
    let fan = if spec.shape == Shape::FanOut { queue_names.len() as u64 } else { 1 };
    for q in &queue_names {
        admin.queue_declare(q.as_str().into(), durable_queue(), FieldTable::default()).await.with_context(|| format!("declaring {q}"))?;
    }
    if spec.shape == Shape::FanOut {
        let opts = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        admin
            .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, opts, FieldTable::default())
            .await
            .context("declaring the topic exchange")?;
        for q in &queue_names {
            admin
                .queue_bind(
                    q.as_str().into(),
                    exchange.as_str().into(),
                    format!("{prefix}.fan.*").as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {q}"))?;
        }
    }

    let result = async {
        // Consumers first, each consuming before anyone publishes.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sub_tasks = JoinSet::new();
        for (i, &q) in consumer_queues.iter().enumerate() {
            let ch = sub_conns[i % conns].create_channel().await.context("channel.open (consumer)")?;
            ch.basic_qos(spec.prefetch, BasicQosOptions::default()).await.context("basic.qos")?;
            let consumer = ch
                .basic_consume(
                    queue_names[q].as_str().into(),
                    format!("c{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .context("basic.consume")?;
            sub_tasks.spawn(run_consumer(ch, consumer, spec.multi_ack, targets.len(), ctr.clone(), stop_rx.clone()));
        }
        let per_pub_rate = if spec.rate > 0.0 { spec.rate / targets.len() as f64 } else { 0.0 };
        let pubs = open_publishers(&pub_conns, targets, per_pub_rate).await?;
        let setup = t_setup.elapsed();
        let (confirm, t0_ns) = publish_all(pubs, spec.size, spec.window, spec.seconds, spec.drain, &ctr).await?;
        let expected = ctr.published.load(Ordering::Relaxed) * fan;
        await_deliveries(&ctr.received, expected, spec.drain).await;
        let _ = stop_tx.send(true);
        let mut e2e = Hist::default();
        while let Some(r) = sub_tasks.join_next().await {
            e2e.merge(&r.context("consumer panicked")?);
        }
        anyhow::Ok(Measured { e2e, confirm, expected, setup, t0_ns })
    }
    .await;

    // Clean up whatever happened: the queues and exchange go, then the connections.
    let cleanup = async {
        let admin = match admin.status().connected() {
            true => admin,
            false => pub_conns[0].create_channel().await?,
        };
        for q in &queue_names {
            admin.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        if spec.shape == Shape::FanOut {
            admin.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        anyhow::Ok(())
    };
    let cleaned = tokio::time::timeout(Duration::from_secs(30), cleanup).await;
    for c in pub_conns.iter().chain(&sub_conns) {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bench run done".into())).await;
    }
    let m = result?;
    match cleaned {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ctr.error(format!("deleting the run's queues: {e:#}")),
        Err(_) => ctr.error("deleting the run's queues took over 30 s".into()),
    }
    Ok(m)
}

/// The publish-to-confirm latency columns of a row, ms.
pub(crate) fn confirm_cols(row: Row, h: &Hist) -> Row {
    row.num("confirm_p50_ms", q_ms(h, 0.5), 2).num("confirm_p99_ms", q_ms(h, 0.99), 2)
}

/// Runs every (scenario, queue count, rate) combination against the broker at `a.amqp`.
pub fn run(rt: &Runtime, rep: &Reporter, a: &AmqpArgs) -> Result<Vec<RunResult>> {
    let label = a.label.clone().unwrap_or_else(|| host_of(&a.amqp));
    if a.size < STAMP {
        bail!("--size must be at least {STAMP} (the payload carries the send time, publisher and sequence number)");
    }
    rep.facts(
        "amqp settings",
        &Row::new()
            .put("broker", label.clone())
            .put("address", host_of(&a.amqp))
            .put("broker_pid", a.broker_pid.map(|p| p.to_string()).unwrap_or_else(|| "- (no broker CPU/RSS)".into()))
            .put("client", "lapin 4 (tokio), AMQP 0-9-1, one channel per publisher and per consumer")
            .put("messages", "persistent (delivery_mode 2) to durable queues; publisher confirms; consumers ack manually")
            .put("size", a.size)
            .put("seconds", format!("{} per run", a.seconds))
            .put("confirm_window", a.confirm_window)
            .put("prefetch", a.prefetch as u64)
            .put("multi_ack", a.multi_ack as u64)
            .put("connections", format!("{} publishing + {} consuming", a.connections, a.connections))
            .put("latency", "e2e: publish call (rate mode: scheduled send time) to delivery; confirm: publish call to basic.ack")
            .put("rates", "published / confirmed / received per second, each over the time to its last event")
            .put("cpu%", "% of one core over the run (setup and drain included); bench% is this load generator"),
    );
    let mut table = Table::new(format!("amqp: {label}"));
    let mut out = Vec::new();
    let mut failed = 0;
    for &shape in &a.scenario {
        let counts: Vec<usize> = if shape == Shape::FanOut { vec![a.fanout.max(1)] } else { a.queues.clone() };
        for &queues in &counts {
            for &rate in &a.rate {
                let pre = before_run();
                let ctr = Arc::new(Counters::default());
                let mode = if rate > 0.0 { format!("rate={rate}") } else { "max".to_owned() };
                let (publishers, consumers) = match shape {
                    Shape::Durable => (a.publishers.max(queues), a.consumers.max(queues)),
                    Shape::FanOut => (1, queues),
                };
                let spec = RunSpec {
                    url: &a.amqp,
                    shape,
                    queues,
                    publishers,
                    consumers,
                    connections: a.connections,
                    size: a.size,
                    rate,
                    seconds: a.seconds,
                    window: a.confirm_window,
                    prefetch: a.prefetch,
                    multi_ack: a.multi_ack,
                    drain: Duration::from_secs_f64(a.drain_seconds),
                    run_id: run_id(),
                };
                let probe = Probe::start(a.broker_pid);
                let progress =
                    Progress::start(format!("{label} amqp {} q={queues} {mode}", shape.name()), "msg recv", ctr.received.clone());
                let r = rt.block_on(one_run(&spec, ctr.clone()));
                drop(progress);
                let p = probe.finish();
                let m = match r {
                    Ok(m) => m,
                    Err(e) => {
                        rep.note(&format!("{label} amqp {} q={queues} {mode}: FAILED: {e:#}", shape.name()));
                        failed += 1;
                        continue;
                    }
                };
                let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let (published, confirmed, nacked, received, errors) =
                    (load(&ctr.published), load(&ctr.confirmed), load(&ctr.nacked), load(&ctr.received), load(&ctr.errors));
                let span = |t: &AtomicU64| Duration::from_nanos(load(t).saturating_sub(m.t0_ns));
                let per_s = |n: u64, t: Duration| if t.is_zero() { 0.0 } else { n as f64 / t.as_secs_f64() };
                let lost = m.expected.saturating_sub(received);
                let recv_s = per_s(received, span(&ctr.last_received_ns));
                let row = Row::new()
                    .put("broker", label.clone())
                    .put("scenario", shape.name())
                    .put("queues", queues)
                    .put("pubs", publishers)
                    .put("subs", consumers)
                    .put("size", a.size)
                    .put("mode", mode.clone())
                    .num("pub/s", per_s(published, span(&ctr.last_published_ns)), 0)
                    .num("confirm/s", per_s(confirmed, span(&ctr.last_confirmed_ns)), 0)
                    .num("recv/s", recv_s, 0)
                    .num("recv_MB/s", recv_s * a.size as f64 / 1e6, 1)
                    .put("published", published)
                    .put("confirmed", confirmed)
                    .put("received", received)
                    .num("lost%", if m.expected == 0 { 0.0 } else { 100.0 * lost as f64 / m.expected as f64 }, 2)
                    .put("nacks", nacked)
                    .put("redelivered", load(&ctr.redelivered))
                    .put("ooo", load(&ctr.out_of_order))
                    .put("errors", errors);
                let row = confirm_cols(latency_cols(row, &m.e2e), &m.confirm).num("setup_s", m.setup.as_secs_f64(), 2);
                let row = probe_cols(row, &p).pre_with_broker(pre, p.broker_cpu);
                rep.row(&mut table, row);
                if let Some(e) = ctr.first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    rep.note(&format!("{label} amqp {} q={queues} {mode}: {errors} error(s), the first: {e}", shape.name()));
                }
                out.push(RunResult { shape, queues, rate, published, confirmed, nacked, received, expected: m.expected, errors });
            }
        }
    }
    rep.flush_table(&mut table);
    if failed > 0 {
        bail!("{failed} AMQP run(s) against {label} failed (see the notes above)");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Queue capacity: declare N durable queues
// ---------------------------------------------------------------------------

pub struct QueuesResult {
    pub count: usize,
    pub declared: u64,
    pub failed: u64,
}

/// `channels` tasks share one counter of names still to declare (or delete);
/// each keeps one request in flight on its own channel.
async fn on_channels(
    chans: &[Channel],
    names: Arc<Vec<String>>,
    delete: bool,
    done: Arc<AtomicU64>,
) -> Result<(Hist, u64, Option<String>)> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for ch in chans {
        let (ch, names, next, done) = (ch.clone(), names.clone(), next.clone(), done.clone());
        tasks.spawn(async move {
            let mut h = Hist::default();
            let (mut failed, mut first) = (0u64, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(name) = names.get(i) else { break };
                let t = Instant::now();
                let r = if delete {
                    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.map(drop)
                } else {
                    ch.queue_declare(name.as_str().into(), durable_queue(), FieldTable::default()).await.map(drop)
                };
                match r {
                    Ok(()) => {
                        h.record(t.elapsed().as_nanos() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("{name}: {e}"));
                        // A failed method closes the channel: this task is done.
                        break;
                    }
                }
            }
            (h, failed, first)
        });
    }
    let mut h = Hist::default();
    let (mut failed, mut first) = (0, None);
    while let Some(r) = tasks.join_next().await {
        let (th, f, e) = r.context("declare task panicked")?;
        h.merge(&th);
        failed += f;
        if first.is_none() {
            first = e;
        }
    }
    Ok((h, failed, first))
}

pub fn queues(rt: &Runtime, rep: &Reporter, a: &QueuesArgs) -> Result<Vec<QueuesResult>> {
    let label = a.label.clone().unwrap_or_else(|| host_of(&a.amqp));
    rep.facts(
        "amqp-queues settings",
        &Row::new()
            .put("broker", label.clone())
            .put("address", host_of(&a.amqp))
            .put("client", format!("lapin 4: one connection, {} channels, one queue.declare in flight per channel", a.channels))
            .put("queues", "durable, no arguments, no messages, no consumers")
            .put("rss_per_queue", "(broker RSS 1 s after the last declare-ok) - (RSS before), / declared"),
    );
    let mut table = Table::new(format!("amqp-queues: {label}"));
    let mut out = Vec::new();
    for &count in &a.count {
        let pre = before_run();
        let rss0 = a.broker_pid.and_then(rss);
        let probe = Probe::start(a.broker_pid);
        let done = Arc::new(AtomicU64::new(0));
        let id = run_id();
        let names: Arc<Vec<String>> = Arc::new((0..count).map(|i| format!("pmqb-{id}-{i:08}")).collect());
        let res: Result<_> = rt.block_on(async {
            let conn = connect(&a.amqp, &format!("pmqb-{id}-declare")).await?;
            let mut chans = Vec::new();
            for _ in 0..a.channels.max(1) {
                chans.push(conn.create_channel().await.context("channel.open")?);
            }
            let progress = Progress::start(format!("{label} declare {count} queues"), "queues", done.clone());
            let t0 = Instant::now();
            let (h, failed, first) = on_channels(&chans, names.clone(), false, done.clone()).await?;
            let declare_time = t0.elapsed();
            drop(progress);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss_held = a.broker_pid.and_then(rss);
            let mut deleted = None;
            if !a.keep_queues {
                // The declare tasks may have closed channels on errors: fresh ones.
                let mut chans = Vec::new();
                for _ in 0..a.channels.max(1) {
                    chans.push(conn.create_channel().await.context("channel.open")?);
                }
                let gone = Arc::new(AtomicU64::new(0));
                let progress = Progress::start(format!("{label} delete {count} queues"), "queues", gone.clone());
                let t1 = Instant::now();
                let (_, del_failed, _) = on_channels(&chans, names.clone(), true, gone.clone()).await?;
                deleted = Some((t1.elapsed(), gone.load(Ordering::Relaxed), del_failed));
                drop(progress);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bench run done".into())).await;
            anyhow::Ok((declare_time, h, failed, first, rss_held, deleted))
        });
        let p = probe.finish();
        let (declare_time, h, failed, first, rss_held, deleted) = res?;
        std::thread::sleep(Duration::from_millis(500));
        let rss_after = a.broker_pid.and_then(rss);
        let declared = done.load(Ordering::Relaxed);
        let per_queue = match (rss0, rss_held) {
            (Some(a), Some(b)) if declared > 0 => (b as f64 - a as f64) / declared as f64,
            _ => f64::NAN,
        };
        let opt_mib = |b: Option<u64>| b.map(mib).unwrap_or(f64::NAN);
        let mut row = Row::new()
            .put("broker", label.clone())
            .put("queues", count)
            .put("channels", a.channels)
            .put("declared", declared)
            .put("failed", failed)
            .num("declare_s", declare_time.as_secs_f64(), 2)
            .num("declares/s", declared as f64 / declare_time.as_secs_f64().max(1e-9), 0)
            .num("declare_p50_ms", q_ms(&h, 0.5), 2)
            .num("declare_p99_ms", q_ms(&h, 0.99), 2)
            .num("rss_before_MiB", opt_mib(rss0), 1)
            .num("rss_held_MiB", opt_mib(rss_held), 1)
            .num("bytes/queue", per_queue, 0);
        if let Some((t, n, _)) = deleted {
            row = row.num("delete_s", t.as_secs_f64(), 2).num("deletes/s", n as f64 / t.as_secs_f64().max(1e-9), 0);
        }
        row = row
            .num("rss_after_MiB", opt_mib(rss_after), 1)
            .num("broker_cpu%", p.broker_cpu.unwrap_or(f64::NAN), 0)
            .num("bench_cpu%", p.self_cpu.unwrap_or(f64::NAN), 0)
            .pre_with_broker(pre, p.broker_cpu);
        rep.row(&mut table, row);
        if let Some(e) = first {
            rep.note(&format!("{label} declare {count} queues: {failed} failed, the first: {e}"));
        }
        if let Some((_, n, f)) = deleted {
            if f > 0 || n < declared {
                rep.note(&format!("{label} delete {count} queues: {n} deleted, {f} failed"));
            }
        }
        out.push(QueuesResult { count, declared, failed });
    }
    rep.flush_table(&mut table);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_credentials_and_vhost() {
        assert_eq!(host_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "127.0.0.1:5672");
        assert_eq!(host_of("amqp://localhost:5672"), "localhost:5672");
        assert_eq!(host_of("amqp://u:p@w@h:1/v"), "h:1");
    }
}
