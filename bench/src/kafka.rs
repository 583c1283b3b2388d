//! Kafka scenarios against any Kafka-wire broker (`--bootstrap host:port`):
//! produce, consume from earliest, a consumer group, and paced end-to-end
//! latency, driven by librdkafka.
//!
//! The client is librdkafka inside confluent-kafka (Python), run as child
//! processes of `bench/kafka_driver.py`, one per producer or consumer, so
//! each has its own interpreter and librdkafka instance, like separate
//! applications. The `rdkafka` crate would build librdkafka from source
//! (cmake, minutes on two cores) for a benchmark-only dependency; the wheel
//! brings the same C library prebuilt, and the compat suite installs it
//! anyway. What Python adds per message is visible: `--bootstrap mock` runs
//! the same scenarios against librdkafka's in-memory mock broker, the
//! client's own ceiling on this machine, and every row reports the clients'
//! CPU.
//!
//! The driver talks JSON lines on stdout (`ready`, `progress`, `result`) and
//! takes `go` / `stop` on stdin, so every client is connected before the
//! clock starts and a consumer group can be stopped once it has read
//! everything.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::disk::DiskResult;
use crate::hist::Hist;
use crate::mqtt::{children_cpu_seconds, io_chars, mib, q_ms, run_id, Probe};
use crate::report::{before_run, Progress, Reporter, Row, Table};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N producers flat out into a fresh topic of P partitions.
    Produce,
    /// One consumer reads what `produce` wrote, from the earliest offset (all partitions assigned).
    Consume,
    /// K consumers in one consumer group read what `produce` wrote (subscribe, rebalance, auto commit).
    Group,
    /// Producers at a fixed total rate and one live consumer: end-to-end latency at that load.
    E2e,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Produce => "produce",
            Shape::Consume => "consume",
            Shape::Group => "group",
            Shape::E2e => "e2e",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// The broker's bootstrap address, host:port. `mock`: librdkafka's
    /// in-memory mock broker, started for the run (the client's ceiling).
    #[arg(long)]
    pub bootstrap: String,
    /// Name of the broker in the output (default: the address).
    #[arg(long)]
    pub label: Option<String>,
    /// Process id of the broker, for its CPU, RSS and bytes in/out.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Scenarios (comma separated). consume and group read the topic the
    /// preceding produce run of the same settings wrote.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "produce,consume,group,e2e")]
    pub scenario: Vec<Shape>,
    /// Record (value) sizes in bytes, at least 8 (the send time).
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub size: Vec<usize>,
    /// Producer acks: 0, 1, all (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,all")]
    pub acks: Vec<String>,
    /// Compression codecs: none, gzip, snappy, lz4, zstd (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub compression: Vec<String>,
    /// Producer processes.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Partitions of each run's fresh topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Members of the consumer group.
    #[arg(long, default_value_t = 2)]
    pub group_members: usize,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u32,
    /// librdkafka batch.size (bytes per partition batch).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes: u32,
    /// Seconds of producing per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Total msg/s of the e2e scenario's producers.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Python with confluent-kafka (default: $POLYMQ_BENCH_PYTHON, else the
    /// nearest .venv/bin/python above the bench crate or the current directory).
    #[arg(long, env = "POLYMQ_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
    /// Raw sequential write bandwidth, MB/s (O_DIRECT, from `disk`), for the %disk column.
    #[arg(long)]
    pub disk_mbps: Option<f64>,
    /// Buffered + fdatasync bandwidth, MB/s (from `disk`), for the %buffered column.
    #[arg(long)]
    pub buffered_mbps: Option<f64>,
    /// What loopback carries, MB/s (from `loopback`), for the %loopback column.
    #[arg(long)]
    pub loopback_mbps: Option<f64>,
    /// Measure the baselines first, in this run: `disk` (--disk-mib MiB) and `loopback`.
    #[arg(long)]
    pub baselines: bool,
    /// MiB written by the disk baseline.
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: u64,
    /// Seconds a consumer may take to read everything, past which the run
    /// is reported as it stands.
    #[arg(long, default_value_t = 60.0)]
    pub consume_timeout: f64,
}

/// The client: a Python with confluent-kafka and the driver script.
pub struct Client {
    python: PathBuf,
    driver: PathBuf,
    /// "confluent-kafka 2.16.1 (librdkafka 2.16.0), Python 3.11.7".
    pub describe: String,
}

/// The driver next to this crate's sources (the tool runs from its repository).
fn driver_path() -> PathBuf {
    std::env::var_os("POLYMQ_BENCH_KAFKA_DRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka_driver.py"))
}

fn find_venv_python() -> Option<PathBuf> {
    let mut starts = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    for s in starts {
        for dir in s.ancestors() {
            let p = dir.join(".venv/bin/python");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Client {
    /// Finds the client, or says why there is none (no Python, no
    /// confluent-kafka in it, no driver script).
    pub fn find(python: Option<&Path>) -> Result<Client> {
        let driver = driver_path();
        if !driver.is_file() {
            bail!("the Kafka driver {} is missing", driver.display());
        }
        let python = python
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("POLYMQ_BENCH_PYTHON").map(PathBuf::from))
            .or_else(find_venv_python)
            .context("no Python with confluent-kafka: set POLYMQ_BENCH_PYTHON or make .venv (compat/run does)")?;
        let out = Command::new(&python)
            .arg(&driver)
            .arg("version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        let v = last_json(&String::from_utf8_lossy(&out.stdout));
        let Some(r) = v.as_ref().and_then(|v| v.get("result")) else {
            let why = v.and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned)).unwrap_or_else(|| "no answer".into());
            bail!("{} cannot drive Kafka: {why}", python.display());
        };
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let describe = format!("confluent-kafka {} (librdkafka {}), Python {}", s("client_version"), s("librdkafka"), s("python"));
        Ok(Client { python, driver, describe })
    }

    /// Runs a role to its end (no go/stop) and returns its result.
    fn run_role(&self, role: &str, cfg: &Value, timeout: Duration) -> Result<Value> {
        let mut p = self.spawn(role, cfg, None)?;
        p.finish(timeout)
    }

    fn spawn(&self, role: &str, cfg: &Value, total: Option<Arc<AtomicU64>>) -> Result<Proc> {
        let log = tempfile::NamedTempFile::new().context("a file for the client's log")?;
        let mut child = Command::new(&self.python)
            .arg(&self.driver)
            .arg(role)
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.reopen().context("reopening the client's log")?))
            .spawn()
            .with_context(|| format!("starting {} {role}", self.python.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("bench-kafka-client".into())
            .spawn(move || {
                // This client's last progress count; the shared total gets the increments.
                let mut seen = 0u64;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                    if let Some(n) = v.get("progress").and_then(Value::as_u64) {
                        if let Some(t) = &total {
                            if n > seen {
                                t.fetch_add(n - seen, Ordering::Relaxed);
                            }
                        }
                        seen = seen.max(n);
                        continue;
                    }
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            })
            .context("spawning a reader thread")?;
        Ok(Proc { role: role.to_owned(), child, stdin, rx, log })
    }
}

fn last_json(text: &str) -> Option<Value> {
    text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok())
}

/// One client process.
struct Proc {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    log: tempfile::NamedTempFile,
}

impl Proc {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn failure(&mut self, what: &str) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        anyhow::anyhow!("kafka client ({}) {what}; its log ends: {}", self.role, self.log_tail())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) if v.get("ready").is_some() => Ok(()),
            Ok(v) => Err(self.failure(&format!("said {v} instead of ready"))),
            Err(_) => Err(self.failure(&format!("was not ready within {} s", timeout.as_secs()))),
        }
    }

    fn tell(&mut self, word: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{word}");
            let _ = s.flush();
        }
    }

    /// Waits for the result line and the process's exit.
    fn finish(&mut self, timeout: Duration) -> Result<Value> {
        let r = self.rx.recv_timeout(timeout);
        self.stdin = None;
        match r {
            Ok(v) => {
                if let Some(r) = v.get("result") {
                    let r = r.clone();
                    let _ = self.child.wait();
                    Ok(r)
                } else {
                    let e = v.get("error").and_then(Value::as_str).unwrap_or("no result").to_owned();
                    Err(self.failure(&format!("failed: {e}")))
                }
            }
            Err(_) => Err(self.failure(&format!("gave no result within {} s", timeout.as_secs()))),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A client left over from a failed run must not keep loading the machine.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Merges a driver's histogram ([bucket upper edge, count] pairs and the exact max).
fn merge_hist(h: &mut Hist, v: Option<&Value>) {
    let Some(v) = v else { return };
    if let Some(b) = v.get("buckets").and_then(Value::as_array) {
        for pair in b {
            let (Some(x), Some(n)) = (pair.get(0).and_then(Value::as_u64), pair.get(1).and_then(Value::as_u64)) else { continue };
            h.record_n(x, n);
        }
    }
    if let Some(m) = v.get("max").and_then(Value::as_u64) {
        h.cap_max(m);
    }
}

fn first_errors(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| r.get("first_errors").and_then(Value::as_array))
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .take(3)
        .collect()
}

/// The librdkafka mock broker for `--bootstrap mock`: a driver process that
/// holds it until its stdin closes.
struct Mock {
    /// Held for the run: the mock broker lives until this process is dropped (killed).
    _proc: Proc,
    bootstrap: String,
    pid: u32,
}

fn start_mock(client: &Client) -> Result<Mock> {
    let mut proc = client.spawn("mock-broker", &json!({}), None)?;
    let v = proc.rx.recv_timeout(Duration::from_secs(30)).map_err(|_| proc.failure("started no mock broker within 30 s"))?;
    let r = v.get("result").cloned().ok_or_else(|| proc.failure(&format!("said {v}")))?;
    let bootstrap = r.get("bootstrap").and_then(Value::as_str).unwrap_or_default().to_owned();
    let pid = r.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
    Ok(Mock { _proc: proc, bootstrap, pid })
}

/// What one produce run measured.
pub struct ProduceOut {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub bytes: u64,
    pub secs: f64,
    pub ack: Hist,
    pub first_errors: Vec<String>,
}

/// What a consume, group or e2e run measured (the consumer side).
pub struct ConsumeOut {
    pub received: u64,
    pub bytes: u64,
    pub errors: u64,
    /// From `go` (or the first message, for a group) to the last message.
    pub secs: f64,
    /// From `go` to the first message: connecting, joining, the first fetch.
    pub first_ms: f64,
    pub latency: Hist,
    pub first_errors: Vec<String>,
    /// When the last message arrived, ns of the driver's clock (CLOCK_MONOTONIC).
    pub last_ns: u64,
}

/// The broker-side measurements around one run.
struct Around {
    probe: Probe,
    io0: Option<(u64, u64)>,
    children0: f64,
    pid: Option<u32>,
    t0: Instant,
}

struct AroundOut {
    broker_cpu: Option<f64>,
    rss_peak: Option<u64>,
    /// MB/s the broker wrote through write(2)/writev(2) (`wchar`): its log
    /// files, plus socket writes that use writev (send(2) is not counted).
    write_mbps: Option<f64>,
    client_cpu: Option<f64>,
}

impl Around {
    fn start(pid: Option<u32>) -> Around {
        Around {
            probe: Probe::start(pid),
            io0: pid.and_then(io_chars),
            children0: children_cpu_seconds().unwrap_or(0.0),
            pid,
            t0: Instant::now(),
        }
    }

    /// After every client of the run was waited for (their CPU is counted then).
    fn finish(self) -> AroundOut {
        let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
        let p = self.probe.finish();
        let io1 = self.pid.and_then(io_chars);
        let write_mbps = match (self.io0, io1) {
            (Some(a), Some(b)) => Some(b.1.saturating_sub(a.1) as f64 / 1e6 / secs),
            _ => None,
        };
        let client_cpu = children_cpu_seconds().map(|c| 100.0 * (c - self.children0) / secs);
        AroundOut { broker_cpu: p.broker_cpu, rss_peak: p.broker_rss_peak, write_mbps, client_cpu }
    }
}

struct Target<'a> {
    client: &'a Client,
    /// librdkafka's mock broker: no CreateTopics (it has no controller);
    /// topics are created on first use with its default of 4 partitions.
    mock: bool,
    bootstrap: String,
    label: String,
    pid: Option<u32>,
}

fn acks_value(acks: &str) -> Result<String> {
    Ok(match acks {
        "0" => "0".into(),
        "1" => "1".into(),
        "all" | "-1" => "all".into(),
        other => bail!("--acks {other:?}: expected 0, 1 or all"),
    })
}

/// Partitions of the mock broker's auto-created topics (librdkafka's default).
const MOCK_PARTITIONS: u32 = 4;

fn create_topic(t: &Target, topic: &str, partitions: u32) -> Result<()> {
    if t.mock {
        return Ok(());
    }
    create_topic_at(t.client, &t.bootstrap, topic, partitions)
}

/// Creates `topic` with `partitions` (CreateTopics) on the broker at
/// `bootstrap` and waits until every partition has a leader.
pub(crate) fn create_topic_at(client: &Client, bootstrap: &str, topic: &str, partitions: u32) -> Result<()> {
    client
        .run_role("create-topic", &json!({"bootstrap": bootstrap, "topic": topic, "partitions": partitions}), Duration::from_secs(90))
        .with_context(|| format!("creating topic {topic} ({partitions} partitions)"))?;
    Ok(())
}

/// One consumer reading a topic as it is written (every partition assigned
/// from the earliest offset), measuring each record's latency from the send
/// time in its first 8 bytes.
///
/// The bench's own (Rust) publishers stamp with `mqtt::epoch`'s clock; the
/// consumer reads Python's CLOCK_MONOTONIC. With `calibrate` the offset
/// between the two is measured before the start (the round trip of a
/// `clock` question over the driver's pipes, the fastest of 8, taking the
/// midpoint: off by at most half that round trip, tens of µs on an idle
/// machine) and the consumer subtracts it. Without, the stamps come from
/// the driver's producers and share its clock.
pub(crate) struct LiveConsumer {
    proc: Proc,
    pub(crate) received: Arc<AtomicU64>,
    /// Python's clock minus the stamps' clock, ns.
    pub(crate) offset_ns: i64,
    /// Half the round trip of the best calibration sample, ns (0 without calibration).
    pub(crate) offset_error_ns: u64,
}

impl LiveConsumer {
    /// Starts the consumer, connected and assigned before this returns,
    /// and lets its first fetch reach the broker.
    pub(crate) fn start(client: &Client, bootstrap: &str, topic: &str, seconds: f64, calibrate: bool) -> Result<LiveConsumer> {
        let received = Arc::new(AtomicU64::new(0));
        let cfg = json!({"bootstrap": bootstrap, "topic": topic, "control": true, "latency": true, "seconds": seconds});
        let mut proc = client.spawn("consume", &cfg, Some(received.clone()))?;
        proc.wait_ready(READY_TIMEOUT)?;
        let (mut offset_ns, mut offset_error_ns) = (0i64, 0u64);
        if calibrate {
            let mut best = u64::MAX;
            for _ in 0..8 {
                let t0 = crate::mqtt::now_ns();
                proc.tell("clock");
                let v = proc.rx.recv_timeout(Duration::from_secs(10)).map_err(|_| proc.failure("did not tell its clock within 10 s"))?;
                let t1 = crate::mqtt::now_ns();
                let theirs =
                    v.get("clock").and_then(Value::as_u64).ok_or_else(|| proc.failure(&format!("said {v} instead of its clock")))?;
                if t1 - t0 < best {
                    best = t1 - t0;
                    offset_ns = theirs as i64 - (t0 + (t1 - t0) / 2) as i64;
                }
            }
            offset_error_ns = best / 2;
            proc.tell(&format!("offset {offset_ns}"));
        }
        proc.tell("go");
        // Let the consumer's first fetch reach the broker before anything is published.
        std::thread::sleep(Duration::from_millis(500));
        Ok(LiveConsumer { proc, received, offset_ns, offset_error_ns })
    }

    /// Waits until `expect` records arrived (or none for 2 s, or 10 s
    /// passed), stops the consumer and returns what it measured.
    pub(crate) fn finish(mut self, expect: u64) -> Result<ConsumeOut> {
        let until = Instant::now() + Duration::from_secs(10);
        let mut last = (self.received.load(Ordering::Relaxed), Instant::now());
        while self.received.load(Ordering::Relaxed) < expect && Instant::now() < until {
            let got = self.received.load(Ordering::Relaxed);
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.tell("stop");
        Ok(collect_consume(&[self.proc.finish(Duration::from_secs(30))?], false))
    }
}

struct ProduceSpec<'a> {
    topic: &'a str,
    size: usize,
    acks: &'a str,
    compression: &'a str,
    producers: usize,
    linger_ms: u32,
    batch_bytes: u32,
    seconds: f64,
    /// Total msg/s over all producers; 0 = flat out.
    rate: f64,
}

fn producer_cfg(t: &Target, s: &ProduceSpec, rate_each: f64) -> Value {
    json!({
        "bootstrap": t.bootstrap, "topic": s.topic, "size": s.size, "seconds": s.seconds,
        "acks": s.acks, "linger_ms": s.linger_ms, "batch_bytes": s.batch_bytes,
        "compression": s.compression, "rate": rate_each, "control": true,
    })
}

fn collect_produce(results: &[Value]) -> ProduceOut {
    let mut ack = Hist::default();
    for r in results {
        merge_hist(&mut ack, r.get("ack_latency"));
    }
    let start = results.iter().map(|r| u(r, "start_ns")).min().unwrap_or(0);
    let end = results.iter().map(|r| u(r, "end_ns")).max().unwrap_or(0);
    ProduceOut {
        sent: results.iter().map(|r| u(r, "sent")).sum(),
        acked: results.iter().map(|r| u(r, "acked")).sum(),
        errors: results.iter().map(|r| u(r, "errors")).sum(),
        bytes: results.iter().map(|r| u(r, "bytes")).sum(),
        secs: end.saturating_sub(start) as f64 / 1e9,
        ack,
        first_errors: first_errors(results),
    }
}

fn collect_consume(results: &[Value], from_first: bool) -> ConsumeOut {
    let mut latency = Hist::default();
    for r in results {
        merge_hist(&mut latency, r.get("latency"));
    }
    let start = results.iter().map(|r| u(r, "start_ns")).min().unwrap_or(0);
    let first = results.iter().map(|r| u(r, "first_ns")).filter(|&x| x > 0).min().unwrap_or(0);
    let last = results.iter().map(|r| u(r, "last_ns")).max().unwrap_or(0);
    let from = if from_first && first > 0 { first } else { start };
    ConsumeOut {
        received: results.iter().map(|r| u(r, "received")).sum(),
        bytes: results.iter().map(|r| u(r, "bytes")).sum(),
        errors: results.iter().map(|r| u(r, "errors")).sum(),
        secs: last.saturating_sub(from) as f64 / 1e9,
        first_ms: if first > 0 { first.saturating_sub(start) as f64 / 1e6 } else { f64::NAN },
        latency,
        first_errors: first_errors(results),
        last_ns: last,
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// N producers flat out (or paced), all connected before the clock starts.
fn produce(t: &Target, s: &ProduceSpec, progress_label: &str) -> Result<(ProduceOut, AroundOut)> {
    let total = Arc::new(AtomicU64::new(0));
    let rate_each = if s.rate > 0.0 { s.rate / s.producers as f64 } else { 0.0 };
    let mut procs = Vec::new();
    for _ in 0..s.producers.max(1) {
        procs.push(t.client.spawn("produce", &producer_cfg(t, s, rate_each), Some(total.clone()))?);
    }
    for p in &mut procs {
        p.wait_ready(READY_TIMEOUT)?;
    }
    let around = Around::start(t.pid);
    let progress = Progress::start(progress_label.to_owned(), "msg acked", total.clone());
    for p in &mut procs {
        p.tell("go");
    }
    let timeout = Duration::from_secs_f64(s.seconds + 60.0);
    let mut results = Vec::new();
    for p in &mut procs {
        results.push(p.finish(timeout)?);
    }
    drop(progress);
    Ok((collect_produce(&results), around.finish()))
}

/// `members` consumers of `topic` (group None: one consumer with every
/// partition assigned from the earliest offset), stopped once they have read
/// `expect` messages together or `timeout` passed.
fn consume(
    t: &Target,
    topic: &str,
    group: Option<&str>,
    members: usize,
    expect: u64,
    timeout: Duration,
    label: &str,
) -> Result<(ConsumeOut, AroundOut)> {
    let total = Arc::new(AtomicU64::new(0));
    let mut procs = Vec::new();
    for _ in 0..members.max(1) {
        let cfg = json!({"bootstrap": t.bootstrap, "topic": topic, "group": group, "control": true,
                          "seconds": timeout.as_secs_f64() + 5.0,
                          "expect": if group.is_none() { expect } else { 0 }});
        procs.push(t.client.spawn("consume", &cfg, Some(total.clone()))?);
    }
    for p in &mut procs {
        p.wait_ready(READY_TIMEOUT)?;
    }
    let around = Around::start(t.pid);
    let progress = Progress::start(label.to_owned(), "msg", total.clone());
    for p in &mut procs {
        p.tell("go");
    }
    let until = Instant::now() + timeout;
    while total.load(Ordering::Relaxed) < expect
        && Instant::now() < until
        && procs.iter_mut().all(|p| matches!(p.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &mut procs {
        p.tell("stop");
    }
    let mut results = Vec::new();
    for p in &mut procs {
        results.push(p.finish(Duration::from_secs(30))?);
    }
    drop(progress);
    Ok((collect_consume(&results, group.is_some()), around.finish()))
}

/// Producers at `rate` msg/s in total and one consumer reading as they go.
fn e2e(t: &Target, s: &ProduceSpec, label: &str) -> Result<(ProduceOut, ConsumeOut, AroundOut)> {
    let mut procs = Vec::new();
    let rate_each = s.rate / s.producers.max(1) as f64;
    for _ in 0..s.producers.max(1) {
        procs.push(t.client.spawn("produce", &producer_cfg(t, s, rate_each), None)?);
    }
    for p in &mut procs {
        p.wait_ready(READY_TIMEOUT)?;
    }
    let consumer = LiveConsumer::start(t.client, &t.bootstrap, s.topic, s.seconds + 60.0, false)?;
    let around = Around::start(t.pid);
    let progress = Progress::start(label.to_owned(), "msg recv", consumer.received.clone());
    for p in &mut procs {
        p.tell("go");
    }
    let mut results = Vec::new();
    for p in &mut procs {
        results.push(p.finish(Duration::from_secs_f64(s.seconds + 60.0))?);
    }
    let prod = collect_produce(&results);
    // Everything acknowledged should arrive: wait for it.
    let cons = consumer.finish(prod.acked)?;
    drop(progress);
    Ok((prod, cons, around.finish()))
}

fn ms(h: &Hist, q: f64) -> f64 {
    q_ms(h, q)
}

/// The columns every row has: the broker's and the clients' side.
fn resource_cols(row: Row, a: &AroundOut) -> Row {
    row.num("broker_cpu%", a.broker_cpu.unwrap_or(f64::NAN), 0)
        .num("broker_rss_MiB", a.rss_peak.map(mib).unwrap_or(f64::NAN), 1)
        .num("broker_write_MB/s", a.write_mbps.unwrap_or(f64::NAN), 1)
        .num("client_cpu%", a.client_cpu.unwrap_or(f64::NAN), 0)
}

/// What a `kafka` invocation measured, for smoke's checks.
pub struct RunResult {
    pub shape: Shape,
    pub size: usize,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub expected: u64,
    pub errors: u64,
}

/// The baselines of this run (measured now with --baselines, or given).
pub struct Baselines {
    pub disk: DiskResult,
    pub loopback: Option<f64>,
}

pub fn run(rep: &Reporter, scratch: &crate::Scratch, a: &KafkaArgs) -> Result<Vec<RunResult>> {
    let client = Client::find(a.python.as_deref())?;
    for &s in &a.size {
        if s < 8 {
            bail!("--size must be at least 8 (the payload carries its send time)");
        }
    }
    let acks: Vec<String> = a.acks.iter().map(|x| acks_value(x)).collect::<Result<_>>()?;
    let mut base = Baselines { disk: DiskResult { direct: a.disk_mbps, buffered: a.buffered_mbps }, loopback: a.loopback_mbps };
    if a.baselines {
        let d = crate::disk::run(
            rep,
            scratch,
            &crate::disk::DiskArgs { mib: a.disk_mib, block_kib: 1024, sync_seconds: 0.0, no_dd: true, repeat: 1 },
        )?;
        base.disk = DiskResult { direct: d.direct.or(base.disk.direct), buffered: d.buffered.or(base.disk.buffered) };
        base.loopback = Some(crate::loopback::run(rep, &crate::loopback::LoopbackArgs { seconds: 2.0, block_kib: 1024, repeat: 3 })?);
    }
    let mock = if a.bootstrap == "mock" { Some(start_mock(&client)?) } else { None };
    let (bootstrap, pid) = match &mock {
        Some(m) => (m.bootstrap.clone(), Some(m.pid)),
        None => (a.bootstrap.clone(), a.broker_pid),
    };
    let label = a.label.clone().unwrap_or_else(|| if mock.is_some() { "librdkafka mock broker".into() } else { a.bootstrap.clone() });
    rep.facts(
        "kafka settings",
        &Row::new()
            .put("broker", label.clone())
            .put("bootstrap", bootstrap.clone())
            .put("broker_pid", pid.map(|p| p.to_string()).unwrap_or_else(|| "- (no broker CPU/RSS)".into()))
            .put("client", client.describe.clone())
            .put("client_processes", format!("{} producer(s), 1 consumer (consume, e2e), {} group members", a.producers, a.group_members))
            .put("partitions", a.partitions as u64)
            .put("linger_ms", a.linger_ms as u64)
            .put("batch_bytes", a.batch_bytes as u64)
            .put("seconds", format!("{} of producing per run", a.seconds))
            .put("disk_MB/s", base.disk.direct.map(|v| format!("{v:.0} (O_DIRECT), buffered {:.0}", base.disk.buffered.unwrap_or(f64::NAN))).unwrap_or_else(|| "-".into()))
            .put("loopback_MB/s", base.loopback.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()))
            .put("MB/s", "record values only (MB = 10^6 B); the wire and the log carry a few % more (batch and record headers)")
            .put("latency", "ack: produce() call to delivery report (every 16th message); e2e: scheduled send time in the payload to the consumer, one clock")
            .put("cpu%", "% of one core over the run: broker_cpu% the broker, client_cpu% all client processes")
            .put("broker_write_MB/s", "the broker's wchar (/proc/PID/io) over the run: write(2)/writev(2) to its log files (and to sockets where it uses writev)"),
    );
    let mut table = Table::new(format!("kafka: {label}"));
    let target = Target { client: &client, mock: mock.is_some(), bootstrap, label: label.clone(), pid };
    let mut out = Vec::new();
    let mut failed = 0;
    let id = run_id();
    let mut n = 0;
    for &size in &a.size {
        for ack in &acks {
            for comp in &a.compression {
                n += 1;
                let what = format!("size {size} acks {ack} {comp}");
                if let Err(e) = one_setting(rep, &mut table, &target, a, &base, &format!("pmqb-{id}-{n}"), size, ack, comp, &mut out) {
                    rep.note(&format!("{label} kafka {what}: FAILED: {e:#}"));
                    failed += 1;
                }
            }
        }
    }
    rep.flush_table(&mut table);
    drop(mock);
    if failed > 0 {
        bail!("{failed} Kafka run(s) against {label} failed (see the notes above)");
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn one_setting(
    rep: &Reporter,
    table: &mut Table,
    t: &Target,
    a: &KafkaArgs,
    base: &Baselines,
    topic: &str,
    size: usize,
    acks: &str,
    comp: &str,
    out: &mut Vec<RunResult>,
) -> Result<()> {
    let spec = ProduceSpec {
        topic,
        size,
        acks,
        compression: comp,
        producers: a.producers,
        linger_ms: a.linger_ms,
        batch_bytes: a.batch_bytes,
        seconds: a.seconds,
        rate: 0.0,
    };
    let head = |scenario: &str| {
        Row::new()
            .put("broker", t.label.clone())
            .put("scenario", scenario.to_owned())
            .put("size", size)
            .put("acks", acks.to_owned())
            .put("compression", comp.to_owned())
            .put("partitions", if t.mock { MOCK_PARTITIONS } else { a.partitions } as u64)
    };
    let pct = |v: f64, of: Option<f64>| of.map(|o| 100.0 * v / o).unwrap_or(f64::NAN);
    let wants = |s: Shape| a.scenario.contains(&s);
    let mut produced: Option<u64> = None;
    if wants(Shape::Produce) || wants(Shape::Consume) || wants(Shape::Group) {
        create_topic(t, topic, a.partitions)?;
        let pre = before_run();
        let (p, r) = produce(t, &spec, &format!("{} produce {size} B acks={acks} {comp}", t.label))?;
        let mbps = p.bytes as f64 / 1e6 / p.secs.max(1e-9);
        let row = head("produce")
            .put("clients", a.producers)
            .put("msgs", p.acked)
            .num("msg/s", p.acked as f64 / p.secs.max(1e-9), 0)
            .num("MB/s", mbps, 1)
            .num("%disk", pct(mbps, base.disk.direct), 1)
            .num("%buffered", pct(mbps, base.disk.buffered), 1)
            .num("%loopback", f64::NAN, 1)
            .num("p50_ms", ms(&p.ack, 0.5), 2)
            .num("p99_ms", ms(&p.ack, 0.99), 2)
            .num("p99.9_ms", ms(&p.ack, 0.999), 2)
            .put("latency", "ack")
            .put("errors", p.errors)
            .num("first_ms", f64::NAN, 0);
        let row = resource_cols(row, &r).pre_with_broker(pre, Some(r.broker_cpu.unwrap_or(0.0) + r.client_cpu.unwrap_or(0.0)));
        rep.row(table, row);
        if !p.first_errors.is_empty() {
            rep.note(&format!(
                "{} produce {size} B acks={acks} {comp}: {} error(s), the first: {}",
                t.label,
                p.errors,
                p.first_errors.join("; ")
            ));
        }
        out.push(RunResult { shape: Shape::Produce, size, sent: p.sent, acked: p.acked, received: 0, expected: p.sent, errors: p.errors });
        produced = Some(p.acked);
    }
    let timeout = Duration::from_secs_f64(a.consume_timeout);
    for (shape, group, members) in [(Shape::Consume, None, 1usize), (Shape::Group, Some(format!("{topic}-g")), a.group_members)] {
        if !wants(shape) {
            continue;
        }
        let Some(expect) = produced else { continue };
        if t.mock {
            rep.note(&format!(
                "{} {}: skipped: the mock broker does not keep everything produced (it read back ~18 k of 1.2 M records in a trial), so it is no ceiling for reading",
                t.label,
                shape.name()
            ));
            continue;
        }
        let pre = before_run();
        let (c, r) = consume(t, topic, group.as_deref(), members, expect, timeout, &format!("{} {} {size} B", t.label, shape.name()))?;
        let mbps = c.bytes as f64 / 1e6 / c.secs.max(1e-9);
        let row = head(shape.name())
            .put("clients", members)
            .put("msgs", c.received)
            .num("msg/s", c.received as f64 / c.secs.max(1e-9), 0)
            .num("MB/s", mbps, 1)
            .num("%disk", f64::NAN, 1)
            .num("%buffered", f64::NAN, 1)
            .num("%loopback", pct(mbps, base.loopback), 1)
            .num("p50_ms", f64::NAN, 2)
            .num("p99_ms", f64::NAN, 2)
            .num("p99.9_ms", f64::NAN, 2)
            .put("latency", "-")
            .put("errors", c.errors + expect.saturating_sub(c.received))
            .num("first_ms", c.first_ms, 0);
        let row = resource_cols(row, &r).pre_with_broker(pre, Some(r.broker_cpu.unwrap_or(0.0) + r.client_cpu.unwrap_or(0.0)));
        rep.row(table, row);
        if c.received < expect {
            rep.note(&format!("{} {} {size} B: read {} of the {expect} messages produced", t.label, shape.name(), c.received));
        }
        if !c.first_errors.is_empty() {
            rep.note(&format!("{} {} {size} B: {} error(s), the first: {}", t.label, shape.name(), c.errors, c.first_errors.join("; ")));
        }
        out.push(RunResult { shape, size, sent: 0, acked: 0, received: c.received, expected: expect, errors: c.errors });
    }
    if wants(Shape::E2e) && t.mock {
        rep.note(&format!(
            "{} e2e: skipped: a consumer cannot assign the mock broker's partitions before the topic exists, and its fetch does not long-poll like a broker's",
            t.label
        ));
    } else if wants(Shape::E2e) {
        let topic = format!("{topic}-e2e");
        create_topic(t, &topic, a.partitions)?;
        let s = ProduceSpec { topic: &topic, rate: a.rate, ..spec };
        let pre = before_run();
        let (p, c, r) = e2e(t, &s, &format!("{} e2e {size} B rate {}", t.label, a.rate))?;
        // The rate the producers kept (the consumer's clock also counts the wait before them).
        let mbps = p.bytes as f64 / 1e6 / p.secs.max(1e-9);
        let row = head("e2e")
            .put("clients", a.producers + 1)
            .put("msgs", c.received)
            .num("msg/s", p.acked as f64 / p.secs.max(1e-9), 0)
            .num("MB/s", mbps, 1)
            .num("%disk", f64::NAN, 1)
            .num("%buffered", f64::NAN, 1)
            .num("%loopback", f64::NAN, 1)
            .num("p50_ms", ms(&c.latency, 0.5), 2)
            .num("p99_ms", ms(&c.latency, 0.99), 2)
            .num("p99.9_ms", ms(&c.latency, 0.999), 2)
            .put("latency", format!("e2e at {} msg/s", a.rate))
            .put("errors", p.errors + c.errors + p.acked.saturating_sub(c.received))
            .num("first_ms", c.first_ms, 0);
        let row = resource_cols(row, &r).pre_with_broker(pre, Some(r.broker_cpu.unwrap_or(0.0) + r.client_cpu.unwrap_or(0.0)));
        rep.row(table, row);
        if c.received < p.acked {
            rep.note(&format!("{} e2e {size} B: {} of {} acknowledged messages arrived", t.label, c.received, p.acked));
        }
        out.push(RunResult {
            shape: Shape::E2e,
            size,
            sent: p.sent,
            acked: p.acked,
            received: c.received,
            expected: p.acked,
            errors: p.errors + c.errors,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_histogram_merges_into_the_same_buckets() {
        // The driver sends bucket upper edges; recording them must land in
        // the bucket they came from.
        let mut h = Hist::default();
        let v = json!({"buckets": [[1_003_519, 3], [130_047, 1]], "max": 1_000_100, "count": 4});
        merge_hist(&mut h, Some(&v));
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.25), 130_047);
        assert_eq!(h.max(), 1_000_100);
        assert_eq!(h.quantile(1.0), 1_000_100);
    }

    #[test]
    fn acks_words() {
        assert_eq!(acks_value("all").ok().as_deref(), Some("all"));
        assert_eq!(acks_value("-1").ok().as_deref(), Some("all"));
        assert_eq!(acks_value("0").ok().as_deref(), Some("0"));
        assert!(acks_value("2").is_err());
    }
}
