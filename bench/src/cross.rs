//! Cross-protocol scenarios: a message published over one protocol and
//! received over another, through polymq's one address space
//! (docs/interop.md). No peer broker does this, so these run against polymq
//! only; `bench/compare.sh` puts the same-protocol runs of the same shape
//! beside them, so the cost of crossing shows.
//!
//! - `mqtt-kafka`: N MQTT publishers (rumqttc, QoS `--qos`), publisher i on
//!   topic `pmqb-<run id>/<i>`. The first level is the Kafka topic
//!   (`mapping.mqtt_to_streams`), which the run creates first with
//!   `--partitions` partitions: polymq does not create Kafka topics from MQTT
//!   publishes unless `mapping.auto_create_streams` is on (off by default).
//!   Each topic lands in partition murmur2(topic) % partitions. One
//!   librdkafka consumer (bench/kafka_driver.py), every partition assigned
//!   from the earliest offset, reads them as they are written.
//! - `amqp-mqtt`: N lapin publishers with confirms to the shared exchange
//!   `amq.topic` (`mapping.topic_space`), publisher i with routing key
//!   `pmqb-<run id>.<i>`; N rumqttc subscribers, subscriber i on
//!   `pmqb-<run id>/<i>` at QoS `--qos`.
//!
//! Payloads carry the same 20-byte stamp as the MQTT and AMQP scenarios
//! (send time or scheduled send time, sequence number, publisher), so the
//! receiving side measures end-to-end latency; the Kafka consumer is another
//! process, and its clock offset is measured first (see
//! `kafka::LiveConsumer`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::hist::Hist;
use crate::mqtt::{latency_cols, probe_cols, qos_of, run_id, split_addr, Probe, ProbeResult, STAMP};
use crate::report::{before_run, Pre, Progress, Reporter, Row, Table};
use crate::{amqp, kafka, mqtt};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N MQTT publishers (topic `<id>/<i>`) -> the Kafka topic `<id>` -> one Kafka consumer.
    MqttKafka,
    /// N AMQP publishers (amq.topic, key `<id>.<i>`) -> N MQTT subscribers (`<id>/<i>`).
    AmqpMqtt,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::MqttKafka => "mqtt-kafka",
            Shape::AmqpMqtt => "amqp-mqtt",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CrossArgs {
    /// polymq's MQTT listener, host:port.
    #[arg(long, default_value = "127.0.0.1:1883", env = "POLYMQ_BENCH_MQTT")]
    pub mqtt: String,
    /// polymq's AMQP listener: amqp://user:pass@host:port/vhost (vhost `/` is `%2f`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", env = "POLYMQ_BENCH_AMQP")]
    pub amqp: String,
    /// polymq's Kafka listener, host:port.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Name of the broker in the rows (default: polymq).
    #[arg(long)]
    pub label: Option<String>,
    /// The broker's process id: its CPU (utime+stime) and RSS are read from /proc during each run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Scenarios (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mqtt-kafka,amqp-mqtt")]
    pub scenario: Vec<Shape>,
    /// Publishers (each on a topic of its own); amqp-mqtt has as many MQTT subscribers.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// QoS of the MQTT side: mqtt-kafka's publishes, amqp-mqtt's subscriptions.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Payload bytes (at least 20: the send time, publisher and sequence number).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Publish rates in msg/s, all publishers together (comma separated); 0 = as fast as
    /// possible. One run per rate.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub rate: Vec<f64>,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Most QoS 1/2 publishes an MQTT publisher has unacknowledged.
    #[arg(long, default_value_t = 20)]
    pub inflight: u16,
    /// Most publishes an AMQP publisher has unconfirmed.
    #[arg(long, default_value_t = 64)]
    pub confirm_window: usize,
    /// AMQP connections the publishers' channels are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Partitions of mqtt-kafka's Kafka topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// amqp-mqtt's subscribers keep persistent sessions (clean session 0):
    /// polymq then writes every message to its log.
    #[arg(long)]
    pub persistent: bool,
    /// Python with confluent-kafka for the Kafka consumer (see `kafka --python`).
    #[arg(long, env = "POLYMQ_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
    /// After publishing stops, wait up to this many seconds for deliveries still under way.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
}

/// What one run measured, for smoke's checks.
pub struct RunResult {
    pub shape: Shape,
    pub rate: f64,
    /// Publishes made, and acknowledged (MQTT PUBACK/PUBCOMP, AMQP confirm).
    pub published: u64,
    pub acked: u64,
    pub received: u64,
    pub errors: u64,
}

/// Both sides of a run, as the row reports them.
struct Measured {
    published: u64,
    acked: u64,
    received: u64,
    received_bytes: u64,
    /// Errors of either side (connections, refused publishes, stamps missing).
    errors: u64,
    out_of_order: Option<u64>,
    /// Since the start of publishing: the last acknowledgement, the last delivery.
    t_acked: Duration,
    t_recv: Duration,
    e2e: Hist,
    confirm: Option<Hist>,
    first_error: Option<String>,
    /// The Kafka consumer's CPU (% of a core over the run) and how exactly its clock was matched.
    client_cpu: Option<f64>,
    clock_error_ms: Option<f64>,
}

struct Ctx<'a> {
    a: &'a CrossArgs,
    rate: f64,
    id: String,
}

/// MQTT publishers -> polymq -> the Kafka topic of their first level -> one librdkafka consumer.
fn mqtt_kafka(rt: &Runtime, c: &Ctx, client: &kafka::Client, label: &str) -> Result<Measured> {
    let a = c.a;
    let (host, port) = split_addr(&a.mqtt)?;
    let qos = qos_of(a.qos)?;
    let topic = format!("pmqb-{}", c.id);
    kafka::create_topic_at(client, &a.bootstrap, &topic, a.partitions)?;
    let short = &c.id[..c.id.len().min(8)];
    let conn = mqtt::Conn { host: &host, port, size: a.size, inflight: a.inflight, short };
    let n = a.publishers.max(1);
    let rate_each = if c.rate > 0.0 { c.rate / n as f64 } else { 0.0 };
    let pubs = rt.block_on(mqtt::connect_publishers(&conn, (0..n).map(|i| format!("{topic}/{i}")).collect(), rate_each))?;
    let consumer = kafka::LiveConsumer::start(client, &a.bootstrap, &topic, a.seconds + a.drain_seconds + 60.0, true)?;
    let (offset, clock_error) = (consumer.offset_ns, consumer.offset_error_ns);
    let children0 = mqtt::children_cpu_seconds();
    let t_consumer = std::time::Instant::now();
    let ctr = Arc::new(mqtt::Counters::default());
    let progress = Progress::start(format!("{label} {} {}", Shape::MqttKafka.name(), mode(c.rate)), "msg recv", consumer.received.clone());
    let t0_ns = rt.block_on(mqtt::publish_all(pubs, qos, a.size, a.inflight, a.seconds, Duration::from_secs_f64(a.drain_seconds), &ctr))?;
    let published = ctr.published.load(Ordering::Relaxed);
    let out = consumer.finish(published)?;
    drop(progress);
    let client_cpu =
        children0.zip(mqtt::children_cpu_seconds()).map(|(c0, c1)| 100.0 * (c1 - c0) / t_consumer.elapsed().as_secs_f64().max(1e-9));
    let since_t0 = |t: u64| Duration::from_nanos(t.saturating_sub(t0_ns));
    // The consumer's clock, back on the stamps' clock.
    let last_recv = (out.last_ns as i64 - offset).max(0) as u64;
    let mut first_error = ctr.first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if first_error.is_none() {
        first_error = out.first_errors.first().cloned();
    }
    Ok(Measured {
        published,
        acked: ctr.completed.load(Ordering::Relaxed),
        received: out.received,
        received_bytes: out.bytes,
        errors: ctr.errors.load(Ordering::Relaxed) + out.errors,
        out_of_order: None,
        t_acked: since_t0(ctr.last_completed_ns.load(Ordering::Relaxed)),
        t_recv: if out.received == 0 { Duration::ZERO } else { since_t0(last_recv) },
        e2e: out.latency,
        confirm: None,
        first_error,
        client_cpu,
        clock_error_ms: Some(clock_error as f64 / 1e6),
    })
}

/// AMQP publishers (confirms) -> amq.topic -> MQTT subscribers.
async fn amqp_mqtt(c: &Ctx<'_>, label: &str) -> Result<Measured> {
    let a = c.a;
    let (host, port) = split_addr(&a.mqtt)?;
    let qos = qos_of(a.qos)?;
    let prefix = format!("pmqb-{}", c.id);
    let short = &c.id[..c.id.len().min(8)];
    let conn = mqtt::Conn { host: &host, port, size: a.size, inflight: a.inflight, short };
    let n = a.publishers.max(1);
    let drain = Duration::from_secs_f64(a.drain_seconds);
    let mctr = Arc::new(mqtt::Counters::default());
    let actr = Arc::new(amqp::Counters::default());
    // Subscribers first, each subscribed before anyone publishes.
    let subs = mqtt::connect_subscribers(&conn, (0..n).map(|i| format!("{prefix}/{i}")).collect(), qos, !a.persistent, n).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_tasks = mqtt::start_subscribers(subs, &mctr, &stop_rx);
    let progress = Progress::start(format!("{label} {} {}", Shape::AmqpMqtt.name(), mode(c.rate)), "msg recv", mctr.received.clone());
    let mut conns = Vec::new();
    for i in 0..a.connections.clamp(1, n) {
        conns.push(amqp::connect(&a.amqp, &format!("{prefix}-pub-{i}")).await?);
    }
    let result = async {
        let targets = (0..n).map(|i| amqp::Target { exchange: "amq.topic".into(), key: format!("{prefix}.{i}") }).collect();
        let rate_each = if c.rate > 0.0 { c.rate / n as f64 } else { 0.0 };
        let pubs = amqp::open_publishers(&conns, targets, rate_each).await?;
        let (confirm, t0_ns) = amqp::publish_all(pubs, a.size, a.confirm_window, a.seconds, drain, &actr).await?;
        let published = actr.published.load(Ordering::Relaxed);
        mqtt::await_deliveries(&mctr.received, published, drain).await;
        anyhow::Ok((confirm, t0_ns, published))
    }
    .await;
    drop(progress);
    let e2e = mqtt::stop_subscribers(sub_tasks, stop_tx).await?;
    for cn in &conns {
        let _ = tokio::time::timeout(Duration::from_secs(5), cn.close(200, "bench run done".into())).await;
    }
    if a.persistent {
        mqtt::discard_sessions(&conn, n).await;
    }
    let (confirm, t0_ns, published) = result?;
    let since_t0 = |t: u64| Duration::from_nanos(t.saturating_sub(t0_ns));
    let first = |m: &std::sync::Mutex<Option<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Measured {
        published,
        acked: actr.confirmed.load(Ordering::Relaxed),
        received: mctr.received.load(Ordering::Relaxed),
        received_bytes: mctr.received_bytes.load(Ordering::Relaxed),
        errors: actr.errors.load(Ordering::Relaxed) + actr.nacked.load(Ordering::Relaxed) + mctr.errors.load(Ordering::Relaxed),
        out_of_order: Some(mctr.out_of_order.load(Ordering::Relaxed)),
        t_acked: since_t0(actr.last_confirmed_ns.load(Ordering::Relaxed)),
        t_recv: since_t0(mctr.last_received_ns.load(Ordering::Relaxed)),
        e2e,
        confirm: Some(confirm),
        first_error: first(&actr.first_error).or_else(|| first(&mctr.first_error)),
        client_cpu: None,
        clock_error_ms: None,
    })
}

fn mode(rate: f64) -> String {
    if rate > 0.0 {
        format!("rate={rate}")
    } else {
        "max".to_owned()
    }
}

fn row(label: &str, shape: Shape, c: &Ctx, m: &Measured, p: &ProbeResult, pre: Pre) -> Row {
    let a = c.a;
    let per_s = |n: u64, t: Duration| if t.is_zero() { 0.0 } else { n as f64 / t.as_secs_f64() };
    let lost = m.published.saturating_sub(m.received);
    let (path, subs) = match shape {
        Shape::MqttKafka => ("MQTT->Kafka", 1),
        Shape::AmqpMqtt => ("AMQP->MQTT", a.publishers.max(1)),
    };
    let row = Row::new()
        .put("broker", label.to_owned())
        .put("scenario", shape.name())
        .put("path", path)
        .put("pubs", a.publishers.max(1))
        .put("subs", subs)
        .put("qos", a.qos as u64)
        .put("size", a.size)
        .put("mode", mode(c.rate))
        .put("session", if shape == Shape::AmqpMqtt && a.persistent { "persistent" } else { "clean" })
        .num("sent/s", per_s(m.acked, m.t_acked), 0)
        .num("sent_MB/s", per_s(m.acked, m.t_acked) * a.size as f64 / 1e6, 1)
        .num("recv/s", per_s(m.received, m.t_recv), 0)
        .num("recv_MB/s", per_s(m.received_bytes, m.t_recv) / 1e6, 1)
        .put("published", m.published)
        .put("acked", m.acked)
        .put("received", m.received)
        .num("lost%", if m.published == 0 { 0.0 } else { 100.0 * lost as f64 / m.published as f64 }, 2)
        .num("ooo", m.out_of_order.map_or(f64::NAN, |o| o as f64), 0)
        .put("errors", m.errors);
    let row = latency_cols(row, &m.e2e);
    let row = amqp::confirm_cols(row, m.confirm.as_ref().unwrap_or(&Hist::default()));
    probe_cols(row, p)
        .num("kafka_client_cpu%", m.client_cpu.unwrap_or(f64::NAN), 0)
        .num("clock_error_ms", m.clock_error_ms.unwrap_or(f64::NAN), 3)
        .pre_with_broker(pre, p.broker_cpu)
}

pub fn run(rt: &Runtime, rep: &Reporter, a: &CrossArgs) -> Result<Vec<RunResult>> {
    let label = a.label.clone().unwrap_or_else(|| "polymq".into());
    if a.size < STAMP {
        bail!("--size must be at least {STAMP} (the payload carries the send time, publisher and sequence number)");
    }
    qos_of(a.qos)?;
    let client = if a.scenario.contains(&Shape::MqttKafka) { Some(kafka::Client::find(a.python.as_deref())?) } else { None };
    let mut facts = Row::new()
        .put("broker", label.clone())
        .put("mqtt", a.mqtt.clone())
        .put("amqp", a.amqp.split_once('@').map_or(a.amqp.as_str(), |(_, h)| h).to_owned())
        .put("kafka", a.bootstrap.clone())
        .put("broker_pid", a.broker_pid.map(|p| p.to_string()).unwrap_or_else(|| "- (no broker CPU/RSS)".into()));
    // Only the scenarios that run (compare.sh runs them one at a time and merges these blocks).
    if let Some(c) = &client {
        facts = facts.put(
            "mqtt-kafka",
            format!(
                "{} rumqttc publishers (MQTT 3.1.1, QoS {}, window {}) on pmqb-<id>/<i> -> Kafka topic pmqb-<id> ({} partitions, created first) -> 1 consumer, {}",
                a.publishers, a.qos, a.inflight, a.partitions, c.describe
            ),
        );
    }
    if a.scenario.contains(&Shape::AmqpMqtt) {
        facts = facts.put(
            "amqp-mqtt",
            format!(
                "{} lapin publishers (confirms, window {}, persistent messages) to amq.topic key pmqb-<id>.<i> -> {} rumqttc subscribers on pmqb-<id>/<i> (QoS {}, {} session)",
                a.publishers,
                a.confirm_window,
                a.publishers,
                a.qos,
                if a.persistent { "persistent" } else { "clean" }
            ),
        );
    }
    rep.facts(
        "cross settings",
        &facts
            .put("size", a.size)
            .put("seconds", format!("{} per run", a.seconds))
            .put("latency", "e2e: publish call (rate mode: scheduled send time) to delivery; the Kafka consumer's clock is matched to the bench's first (clock_error_ms bounds the error)")
            .put("rates", "sent = publishes acknowledged (PUBACK / confirm) / time to the last one; recv = deliveries / time to the last one")
            .put("cpu%", "% of one core over the run; bench% is this load generator, kafka_client_cpu% the consumer process"),
    );
    let mut table = Table::new(format!("cross: {label}"));
    let mut out = Vec::new();
    let mut failed = 0;
    for &shape in &a.scenario {
        for &rate in &a.rate {
            let c = Ctx { a, rate, id: run_id() };
            let pre = before_run();
            let probe = Probe::start(a.broker_pid);
            let r = match shape {
                Shape::MqttKafka => mqtt_kafka(rt, &c, client.as_ref().context("no Kafka client")?, &label),
                Shape::AmqpMqtt => rt.block_on(amqp_mqtt(&c, &label)),
            };
            let p = probe.finish();
            let m = match r {
                Ok(m) => m,
                Err(e) => {
                    rep.note(&format!("{label} {} {}: FAILED: {e:#}", shape.name(), mode(rate)));
                    failed += 1;
                    continue;
                }
            };
            rep.row(&mut table, row(&label, shape, &c, &m, &p, pre));
            if let Some(e) = &m.first_error {
                rep.note(&format!("{label} {} {}: {} error(s), the first: {e}", shape.name(), mode(rate), m.errors));
            }
            if m.received < m.published {
                rep.note(&format!("{label} {} {}: {} of {} publishes arrived", shape.name(), mode(rate), m.received, m.published));
            }
            out.push(RunResult { shape, rate, published: m.published, acked: m.acked, received: m.received, errors: m.errors });
        }
    }
    rep.flush_table(&mut table);
    if failed > 0 {
        bail!("{failed} cross-protocol run(s) against {label} failed (see the notes above)");
    }
    Ok(out)
}
