//! polymq-bench: the project's benchmark tool.
//!
//! `polymq-bench <scenario> [options]`. The core scenarios open a
//! `polymq::Store` in-process on a scratch directory (so they measure the
//! store, not a wire protocol); the protocol scenarios (`mqtt`, `mqtt-conns`,
//! `amqp`, `amqp-queues`, `kafka`) drive real client libraries over real
//! sockets against any broker address, polymq or a peer (`cross`, one
//! protocol in and another out, against polymq); `disk` and
//! `loopback` measure the baselines the Kafka goals are read against. Every scenario prints the machine
//! facts first, then a table (or JSON lines with `--json`), and a progress
//! line on stderr while it runs.

// `is_multiple_of` is newer (1.87) than the workspace's minimum Rust (1.80).
#![allow(clippy::manual_is_multiple_of)]

mod amqp;
mod cross;
mod disk;
mod hist;
mod kafka;
mod load;
mod loopback;
mod mqtt;
mod queues;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use report::Reporter;

#[derive(Parser, Debug)]
#[command(name = "polymq-bench", version, about = "polymq's benchmark tool", long_about = None)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Where scratch data goes: a fresh temporary directory is made inside it
    /// and removed afterwards. Default: the current directory, so the numbers
    /// are for the filesystem you run from.
    #[arg(long, global = true, env = "POLYMQ_BENCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// JSON lines on stdout instead of tables (one object per fact block and result row).
    #[arg(long, global = true)]
    json: bool,
    /// Keep the scratch directory (to inspect the log afterwards).
    #[arg(long, global = true)]
    keep: bool,
    /// Before each measurement wait up to this many seconds for other work
    /// on the machine to stop (CPU under 10 % busy). Each row reports `busy%`
    /// either way.
    #[arg(long, global = true, default_value_t = 0.0)]
    wait_idle: f64,
    /// Tokio worker threads for the load generator and the store's async
    /// side (default: one per core). The log writer is a thread of its own
    /// on top, so on a small machine this decides whether it has a core.
    #[arg(long, global = true)]
    workers: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Raw sequential write bandwidth and fdatasync latency of the data dir's filesystem (the baseline).
    Disk(disk::DiskArgs),
    /// Closed-loop appends by many concurrent appenders to one stream: throughput and latency per fsync policy and size.
    Append(load::AppendArgs),
    /// Finds peak append throughput, then appends at a fraction of it (default half) and reports latency percentiles.
    AppendLatency(load::LatencyArgs),
    /// Pop + ack consumption from a pre-filled queue, and produce + consume at once.
    PopAck(load::PopAckArgs),
    /// Declares many idle queues: declares/s, memory per queue, and the restart (replay) cost.
    Queues(queues::QueuesArgs),
    /// MQTT fan-in, fan-out and pairs at QoS 0/1/2 against any broker (--mqtt host:port): msg/s, MB/s, end-to-end latency.
    Mqtt(mqtt::MqttArgs),
    /// N idle MQTT connections against any broker: connect rate and broker memory per connection.
    MqttConns(mqtt::ConnsArgs),
    /// AMQP 0-9-1 durable queues (publisher confirms, manual acks) and topic fan-out against any broker (--amqp URL).
    Amqp(amqp::AmqpArgs),
    /// Declares N durable AMQP queues against any broker: declare rate and broker memory per queue.
    AmqpQueues(amqp::QueuesArgs),
    /// Kafka produce (acks, size, compression, N producers, P partitions), consume from earliest, a consumer group and paced end-to-end latency against any Kafka-wire broker (--bootstrap host:port, or `mock`), driven by librdkafka.
    Kafka(kafka::KafkaArgs),
    /// Cross-protocol against polymq: MQTT publishers -> a Kafka consumer, AMQP publishers (confirms) -> MQTT subscribers.
    Cross(cross::CrossArgs),
    /// What the loopback link carries: a plain TCP copy through 127.0.0.1 with large writes (the baseline for Kafka fetch).
    Loopback(loopback::LoopbackArgs),
    /// Every scenario for about a second with tiny sizes (CI runs this so the tool cannot rot).
    Smoke,
    /// (internal) Reopens a store and reports replay time and memory, in a fresh process.
    #[command(hide = true)]
    QueuesReopen {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// The scratch directory of one invocation.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Scratch {
    fn new(c: &Common) -> Result<Scratch> {
        let base = match &c.data_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().context("current directory")?,
        };
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("polymq-bench-")
            .tempdir_in(&base)
            .with_context(|| format!("making a scratch dir in {}", base.display()))?;
        let path = dir.path().to_path_buf();
        let dir = if c.keep {
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Scratch { dir, path, runs: std::cell::Cell::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh, empty directory for one store (every run starts from an empty log).
    pub fn fresh(&self, label: &str) -> Result<PathBuf> {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let p = self.path.join(format!("{n:02}-{}", label.replace(['/', ' ', '='], "_")));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Deletes a finished run's data now, so a long matrix never holds
    /// every run's log on disk at once.
    pub fn discard(&self, p: &Path) {
        if self.dir.is_some() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    // By default one worker per core, as a broker would run; the store's
    // writer and maintenance threads come on top and compete for the same cores.
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().context("tokio runtime")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Scenario::QueuesReopen { dir } = &cli.scenario {
        return queues::reopen_child(dir);
    }
    let rep = Reporter::new(cli.common.json);
    report::set_wait_idle(Duration::from_secs_f64(cli.common.wait_idle));
    let scratch = Scratch::new(&cli.common)?;
    let mut facts = report::machine(scratch.path());
    let workers = cli.common.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    facts = facts.put("tokio_workers", workers);
    rep.facts("machine", &facts);
    let rt = runtime(cli.common.workers)?;
    match cli.scenario {
        Scenario::Disk(a) => disk::run(&rep, &scratch, &a).map(drop),
        Scenario::Append(a) => load::append(&rt, &rep, &scratch, &a).map(drop),
        Scenario::AppendLatency(a) => load::latency(&rt, &rep, &scratch, &a),
        Scenario::PopAck(a) => load::pop_ack(&rt, &rep, &scratch, &a),
        Scenario::Queues(a) => queues::run(&rt, &rep, &scratch, &a),
        Scenario::Mqtt(a) => mqtt::run(&rt, &rep, &a).map(drop),
        Scenario::MqttConns(a) => mqtt::conns(&rt, &rep, &a).map(drop),
        Scenario::Amqp(a) => amqp::run(&rt, &rep, &a).map(drop),
        Scenario::AmqpQueues(a) => amqp::queues(&rt, &rep, &a).map(drop),
        Scenario::Kafka(a) => kafka::run(&rep, &scratch, &a).map(drop),
        Scenario::Cross(a) => cross::run(&rt, &rep, &a).map(drop),
        Scenario::Loopback(a) => loopback::run(&rep, &a).map(drop),
        Scenario::Smoke => smoke(&rt, &rep, &scratch),
        Scenario::QueuesReopen { .. } => Ok(()),
    }
}

/// Tiny versions of every scenario, with sanity checks on what they report,
/// so CI notices when the tool (or the API it drives) breaks.
fn smoke(rt: &tokio::runtime::Runtime, rep: &Reporter, scratch: &Scratch) -> Result<()> {
    let started = std::time::Instant::now();
    report::set_sample_busy(false);
    disk::run(rep, scratch, &disk::DiskArgs { mib: 8, block_kib: 1024, sync_seconds: 0.2, no_dd: false, repeat: 1 })?;
    let a = load::AppendArgs {
        size: vec![100],
        fsync: vec!["always".parse().map_err(anyhow::Error::msg)?, "never".parse().map_err(anyhow::Error::msg)?],
        appenders: 8,
        seconds: 0.3,
        messages: None,
        disk_mbps: None,
        segment_mib: 1,
    };
    let res = load::append(rt, rep, scratch, &a)?;
    if res.iter().any(|r| r.msgs == 0) {
        bail!("smoke: an append run completed no message");
    }
    load::latency(
        rt,
        rep,
        scratch,
        &load::LatencyArgs {
            size: vec![100],
            fsync: vec!["interval=50".parse().map_err(anyhow::Error::msg)?],
            appenders: 8,
            paced_appenders: 16,
            seconds: 0.5,
            tick_us: 100,
            peak_seconds: 0.3,
            peak: None,
            rate: None,
            fraction: 0.5,
            segment_mib: 128,
            null: false,
        },
    )?;
    load::pop_ack(
        rt,
        rep,
        scratch,
        &load::PopAckArgs {
            prefill: 2_000,
            consumers: 4,
            batch: 32,
            size: 100,
            fsync: "interval=50".parse().map_err(anyhow::Error::msg)?,
            ack: vec![load::AckMode::Each, load::AckMode::Batch],
            mode: vec![load::PopMode::Drain, load::PopMode::Concurrent],
            producers: 4,
            seconds: 0.5,
        },
    )?;
    queues::run(
        rt,
        rep,
        scratch,
        &queues::QueuesArgs {
            count: vec![20_000],
            tasks: 64,
            fsync: "never".parse().map_err(anyhow::Error::msg)?,
            no_reopen: false,
            probe_seconds: 0.3,
            probe_rate: 2_000.0,
            segment_mib: None,
        },
    )?;
    mqtt_smoke(rt, rep, scratch)?;
    amqp_smoke(rt, rep, scratch)?;
    kafka_smoke(rt, rep, scratch)?;
    cross_smoke(rt, rep, scratch)?;
    rep.note(&format!("smoke: every scenario ran ({:.1} s)", started.elapsed().as_secs_f64()));
    // Give the tick/maintenance threads of the last store a moment to exit cleanly.
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// The MQTT scenarios for a few seconds against an in-process polymq (its
/// MQTT service on a loopback port, real sockets), or against the broker at
/// `POLYMQ_BENCH_SMOKE_MQTT=host:port` (say, a mosquitto, to check the tool
/// itself).
fn mqtt_smoke(rt: &tokio::runtime::Runtime, rep: &Reporter, scratch: &Scratch) -> Result<()> {
    let target = std::env::var("POLYMQ_BENCH_SMOKE_MQTT").unwrap_or_default();
    let mut inproc = None;
    let addr = if target.is_empty() || target == "inproc" {
        let dir = scratch.fresh("mqtt")?;
        let store = load::open_store(&dir, "interval=50".parse().map_err(anyhow::Error::msg)?, Some(8))?;
        let server = mqtt::InProcess::start(rt, store.clone())?;
        let addr = server.addr.to_string();
        inproc = Some((server, store, dir));
        addr
    } else {
        target
    };
    let label = if inproc.is_some() { "polymq (in-process)".to_owned() } else { addr.clone() };
    let result = (|| {
        let runs = mqtt::run(
            rt,
            rep,
            &mqtt::MqttArgs {
                mqtt: addr.clone(),
                label: Some(label.clone()),
                broker_pid: None,
                scenario: vec![mqtt::Shape::FanIn, mqtt::Shape::FanOut, mqtt::Shape::Pairs],
                qos: vec![0, 1, 2],
                clients: 3,
                pairs: 4,
                size: 64,
                rate: vec![0.0],
                seconds: 0.3,
                inflight: 20,
                persistent: false,
                drain_seconds: 3.0,
            },
        )?;
        // A paced run too (the rate mode's scheduler), with persistent sessions (the log).
        let paced = mqtt::run(
            rt,
            rep,
            &mqtt::MqttArgs {
                mqtt: addr.clone(),
                label: Some(label.clone()),
                broker_pid: None,
                scenario: vec![mqtt::Shape::FanIn],
                qos: vec![1],
                clients: 2,
                pairs: 2,
                size: 200,
                rate: vec![2_000.0],
                seconds: 0.3,
                inflight: 20,
                persistent: true,
                drain_seconds: 3.0,
            },
        )?;
        for r in runs.iter().chain(&paced) {
            let what = format!("smoke: mqtt {} qos{} rate {}", r.shape.name(), r.qos, r.rate);
            if r.errors > 0 {
                bail!("{what}: {} error(s)", r.errors);
            }
            if r.completed > r.published {
                bail!("{what}: {} publishes completed but only {} were made", r.completed, r.published);
            }
            if r.completed == 0 || r.received == 0 {
                bail!("{what}: nothing went through (completed {}, received {})", r.completed, r.received);
            }
            // QoS 1 and 2 lose nothing; QoS 0 may drop under overload.
            if r.qos > 0 && r.received < r.expected {
                bail!("{what}: {} of {} expected deliveries arrived", r.received, r.expected);
            }
        }
        let c = mqtt::conns(
            rt,
            rep,
            &mqtt::ConnsArgs {
                mqtt: addr.clone(),
                label: Some(label.clone()),
                broker_pid: None,
                count: vec![200],
                concurrency: 32,
                source_ips: 2,
                keep_alive: 60,
                hold_seconds: 0.2,
            },
        )?;
        if let Some(c) = c.iter().find(|c| c.failed > 0 || c.dropped > 0) {
            bail!("smoke: mqtt-conns: of {} connections {} failed and {} were dropped", c.count, c.failed, c.dropped);
        }
        anyhow::Ok(())
    })();
    if let Some((server, store, dir)) = inproc {
        server.stop(rt)?;
        drop(store);
        scratch.discard(&dir);
    }
    result
}

/// The AMQP scenarios for a few seconds against an in-process polymq (its
/// AMQP service on a loopback port, real sockets), or against the broker at
/// `POLYMQ_BENCH_SMOKE_AMQP=amqp://user:pass@host:port/vhost` (say, a
/// RabbitMQ, to check the tool itself).
fn amqp_smoke(rt: &tokio::runtime::Runtime, rep: &Reporter, scratch: &Scratch) -> Result<()> {
    let target = std::env::var("POLYMQ_BENCH_SMOKE_AMQP").unwrap_or_default();
    let mut inproc = None;
    let url = if target.is_empty() || target == "inproc" {
        let dir = scratch.fresh("amqp")?;
        let store = load::open_store(&dir, "interval=50".parse().map_err(anyhow::Error::msg)?, Some(8))?;
        let svc = rt.block_on(polymq_amqp::AmqpService::new(store.clone(), polymq_amqp::AmqpConfig::default()))?;
        let server = mqtt::InProcess::serve(rt, store.clone(), svc)?;
        let url = format!("amqp://guest:guest@{}/%2f", server.addr);
        inproc = Some((server, store, dir));
        url
    } else {
        target
    };
    let label = if inproc.is_some() { "polymq (in-process)".to_owned() } else { "amqp peer".to_owned() };
    let result = (|| {
        let base = amqp::AmqpArgs {
            amqp: url.clone(),
            label: Some(label.clone()),
            broker_pid: None,
            scenario: vec![amqp::Shape::Durable, amqp::Shape::FanOut],
            queues: vec![1, 3],
            fanout: 3,
            publishers: 2,
            consumers: 2,
            connections: 2,
            size: 64,
            rate: vec![0.0],
            seconds: 0.3,
            confirm_window: 16,
            prefetch: 20,
            multi_ack: 1,
            drain_seconds: 5.0,
        };
        let runs = amqp::run(rt, rep, &base)?;
        // The rate mode's scheduler, and multiple acks.
        let paced = amqp::run(
            rt,
            rep,
            &amqp::AmqpArgs { scenario: vec![amqp::Shape::Durable], queues: vec![1], rate: vec![2_000.0], multi_ack: 8, ..base.clone() },
        )?;
        for r in runs.iter().chain(&paced) {
            let what = format!("smoke: amqp {} queues {} rate {}", r.shape.name(), r.queues, r.rate);
            if r.errors > 0 || r.nacked > 0 {
                bail!("{what}: {} error(s), {} nack(s)", r.errors, r.nacked);
            }
            if r.published == 0 || r.received == 0 {
                bail!("{what}: nothing went through (published {}, received {})", r.published, r.received);
            }
            // Confirmed and acked: nothing may be lost.
            if r.confirmed < r.published {
                bail!("{what}: {} of {} publishes confirmed", r.confirmed, r.published);
            }
            if r.received < r.expected {
                bail!("{what}: {} of {} expected deliveries arrived", r.received, r.expected);
            }
        }
        let q = amqp::queues(
            rt,
            rep,
            &amqp::QueuesArgs {
                amqp: url.clone(),
                label: Some(label.clone()),
                broker_pid: None,
                count: vec![300],
                channels: 8,
                keep_queues: false,
            },
        )?;
        if let Some(q) = q.iter().find(|q| q.failed > 0 || q.declared < q.count as u64) {
            bail!("smoke: amqp-queues: of {} queues {} were declared and {} failed", q.count, q.declared, q.failed);
        }
        anyhow::Ok(())
    })();
    if let Some((server, store, dir)) = inproc {
        server.stop(rt)?;
        drop(store);
        scratch.discard(&dir);
    }
    result
}

/// The Kafka scenarios for a few seconds against an in-process polymq (its
/// Kafka service on a loopback port, real sockets), or against the broker at
/// `POLYMQ_BENCH_SMOKE_KAFKA=host:port`, and the loopback baseline. The
/// client is librdkafka through Python's confluent-kafka (`.venv`, made by
/// compat/run, or `POLYMQ_BENCH_PYTHON`): where it is missing this part is
/// skipped with a note, never failed.
fn kafka_smoke(rt: &tokio::runtime::Runtime, rep: &Reporter, scratch: &Scratch) -> Result<()> {
    loopback::run(rep, &loopback::LoopbackArgs { seconds: 0.2, block_kib: 1024, repeat: 1 })?;
    if let Err(e) = kafka::Client::find(None) {
        rep.note(&format!("smoke: kafka SKIPPED, no Kafka client here: {e:#}"));
        return Ok(());
    }
    let target = std::env::var("POLYMQ_BENCH_SMOKE_KAFKA").unwrap_or_default();
    let mut inproc = None;
    let addr = if target.is_empty() || target == "inproc" {
        let dir = scratch.fresh("kafka")?;
        let store = load::open_store(&dir, "interval=50".parse().map_err(anyhow::Error::msg)?, Some(8))?;
        // No initial rebalance delay: the group run would wait 3 s for nothing.
        let config = polymq_kafka::KafkaConfig { group_initial_rebalance_delay_ms: 0, ..Default::default() };
        let svc = rt.block_on(polymq_kafka::KafkaService::new(store.clone(), config))?;
        let server = mqtt::InProcess::serve(rt, store.clone(), svc)?;
        let addr = server.addr.to_string();
        inproc = Some((server, store, dir));
        addr
    } else {
        target
    };
    let label = if inproc.is_some() { "polymq (in-process)".to_owned() } else { addr.clone() };
    let result = (|| {
        let runs = kafka::run(
            rep,
            scratch,
            &kafka::KafkaArgs {
                bootstrap: addr.clone(),
                label: Some(label.clone()),
                broker_pid: None,
                scenario: vec![kafka::Shape::Produce, kafka::Shape::Consume, kafka::Shape::Group, kafka::Shape::E2e],
                size: vec![100],
                acks: vec!["all".into()],
                compression: vec!["lz4".into()],
                producers: 1,
                partitions: 2,
                group_members: 2,
                linger_ms: 5,
                batch_bytes: 100_000,
                seconds: 0.5,
                rate: 1_000.0,
                python: None,
                disk_mbps: None,
                buffered_mbps: None,
                loopback_mbps: None,
                baselines: false,
                disk_mib: 8,
                consume_timeout: 20.0,
            },
        )?;
        for r in &runs {
            let what = format!("smoke: kafka {} {} B", r.shape.name(), r.size);
            if r.errors > 0 {
                bail!("{what}: {} error(s)", r.errors);
            }
            match r.shape {
                kafka::Shape::Produce if r.acked == 0 || r.acked < r.sent => {
                    bail!("{what}: {} of {} messages acknowledged", r.acked, r.sent)
                }
                kafka::Shape::Consume | kafka::Shape::Group | kafka::Shape::E2e if r.expected == 0 || r.received < r.expected => {
                    bail!("{what}: {} of {} messages read", r.received, r.expected)
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    })();
    if let Some((server, store, dir)) = inproc {
        server.stop(rt)?;
        drop(store);
        scratch.discard(&dir);
    }
    result
}

/// The cross-protocol scenarios for a couple of seconds against an
/// in-process polymq with all three protocol services on one store (as
/// `polymq serve` runs them). Without a Kafka client (see `kafka_smoke`)
/// mqtt-kafka is skipped with a note; amqp-mqtt always runs.
fn cross_smoke(rt: &tokio::runtime::Runtime, rep: &Reporter, scratch: &Scratch) -> Result<()> {
    let dir = scratch.fresh("cross")?;
    let store = load::open_store(&dir, "interval=50".parse().map_err(anyhow::Error::msg)?, Some(8))?;
    let servers = (|| {
        let config = polymq::config::Config { http_listen: "127.0.0.1:0".parse().context("address")?, ..Default::default() };
        let m = rt.block_on(polymq_mqtt::MqttService::new(store.clone(), polymq_mqtt::MqttConfig::from_config(&config)))?;
        let a = rt.block_on(polymq_amqp::AmqpService::new(store.clone(), polymq_amqp::AmqpConfig::from_config(&config)))?;
        let k = rt.block_on(polymq_kafka::KafkaService::new(store.clone(), polymq_kafka::KafkaConfig::from_config(&config)))?;
        mqtt::InProcess::serve_all(rt, store.clone(), vec![m, a, k])
    })();
    let server = match servers {
        Ok(s) => s,
        Err(e) => {
            drop(store);
            scratch.discard(&dir);
            return Err(e);
        }
    };
    let mut scenarios = vec![cross::Shape::AmqpMqtt];
    match kafka::Client::find(None) {
        Ok(_) => scenarios.insert(0, cross::Shape::MqttKafka),
        Err(e) => rep.note(&format!("smoke: cross mqtt-kafka SKIPPED, no Kafka client here: {e:#}")),
    }
    let addr = |name: &str| server.addrs.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).with_context(|| format!("no {name} listener"));
    let result = (|| {
        let base = cross::CrossArgs {
            mqtt: addr("mqtt")?.to_string(),
            amqp: format!("amqp://guest:guest@{}/%2f", addr("amqp")?),
            bootstrap: addr("kafka")?.to_string(),
            label: Some("polymq (in-process)".into()),
            broker_pid: None,
            scenario: scenarios.clone(),
            publishers: 3,
            qos: 1,
            size: 64,
            rate: vec![0.0],
            seconds: 0.5,
            inflight: 20,
            confirm_window: 16,
            connections: 2,
            partitions: 2,
            persistent: false,
            python: None,
            drain_seconds: 5.0,
        };
        let runs = cross::run(rt, rep, &base)?;
        // Paced, with persistent subscriber sessions (through the log).
        let paced = cross::run(rt, rep, &cross::CrossArgs { rate: vec![1_000.0], persistent: true, ..base.clone() })?;
        for r in runs.iter().chain(&paced) {
            let what = format!("smoke: cross {} rate {}", r.shape.name(), r.rate);
            if r.errors > 0 {
                bail!("{what}: {} error(s)", r.errors);
            }
            if r.published == 0 || r.received == 0 {
                bail!("{what}: nothing went through (published {}, received {})", r.published, r.received);
            }
            // Acknowledged at QoS 1 / confirmed: nothing may be lost.
            if r.acked < r.published || r.received < r.acked {
                bail!("{what}: {} published, {} acknowledged, {} received", r.published, r.acked, r.received);
            }
        }
        anyhow::Ok(())
    })();
    server.stop(rt)?;
    drop(store);
    scratch.discard(&dir);
    result
}
