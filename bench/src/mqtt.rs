//! MQTT scenarios over real sockets, against any broker at `--mqtt host:port`
//! (polymq, mosquitto, ...), driven by the `rumqttc` client (MQTT 3.1.1).
//!
//! - `fan-in`: N publishers, each on its own topic, one subscriber to `<prefix>/+`.
//! - `fan-out`: one publisher, N subscribers to its topic.
//! - `pairs`: N publisher/subscriber pairs, one topic each (many topics, point to point).
//!
//! Each message carries its send time (and its publisher and sequence number) in
//! the first 20 bytes of its payload, so the subscriber measures end-to-end latency
//! (publish call, or scheduled send time in rate mode, to delivery). Publishing runs
//! either flat out (`--rate 0`: each publisher as fast as its client's in-flight
//! window and socket allow) or on a fixed schedule (`--rate R`: R msg/s in total,
//! spread over the publishers; a late message keeps its scheduled time, so a broker
//! that stalls the publishers shows it in the latency instead of hiding it).
//!
//! `mqtt-conns` opens N idle connections (keep-alive 60 s) over plain sockets and
//! reports the connect rate and the broker's memory per connection.
//!
//! Every run uses topics under `pmqb/<run id>/`, so runs never see each other's messages.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, NetworkOptions, Outgoing, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::hist::Hist;
use crate::report::{before_run, Progress, Reporter, Row, Table};

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N publishers (one topic each) -> 1 subscriber (wildcard `+`).
    FanIn,
    /// 1 publisher -> N subscribers of its topic.
    FanOut,
    /// N publisher/subscriber pairs, one topic per pair.
    Pairs,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::FanIn => "fan-in",
            Shape::FanOut => "fan-out",
            Shape::Pairs => "pairs",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct MqttArgs {
    /// The broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883", env = "POLYMQ_BENCH_MQTT")]
    pub mqtt: String,
    /// Name of the broker in the rows (default: the address).
    #[arg(long)]
    pub label: Option<String>,
    /// The broker's process id: its CPU (utime+stime) and RSS are read from /proc during each run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Scenarios (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fan-in,fan-out,pairs")]
    pub scenario: Vec<Shape>,
    /// QoS levels (comma separated); one run per scenario and QoS.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub qos: Vec<u8>,
    /// Publishers of fan-in, subscribers of fan-out.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Publisher/subscriber pairs of the pairs scenario.
    #[arg(long, default_value_t = 32)]
    pub pairs: usize,
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
    /// Most QoS 1/2 publishes a publisher has unacknowledged (its in-flight window).
    /// 20 is what paho and mosquitto's own clients use, and mosquitto's default
    /// max_inflight_messages: past it mosquitto acknowledges a 3.1.1 client's QoS 2
    /// publishes and drops them.
    #[arg(long, default_value_t = 20)]
    pub inflight: u16,
    /// Subscribers keep a persistent session (MQTT 3.1.1 clean session 0), so the
    /// broker must keep what they have not acknowledged: in polymq that puts every
    /// delivery through the log (clean sessions are served from memory). Each
    /// session is discarded after the run.
    #[arg(long)]
    pub persistent: bool,
    /// After publishing stops, wait up to this many seconds for deliveries still under way.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ConnsArgs {
    /// The broker, host:port (IPv4).
    #[arg(long, default_value = "127.0.0.1:1883", env = "POLYMQ_BENCH_MQTT")]
    pub mqtt: String,
    /// Name of the broker in the rows (default: the address).
    #[arg(long)]
    pub label: Option<String>,
    /// The broker's process id: its RSS before and after tells the memory per connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Idle connections to open (comma separated: one run per count).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub count: Vec<usize>,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.K to spread connections over (one address
    /// has about 28k ephemeral ports). 0 = as many as the count needs (25,000 each).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// Keep-alive the connections announce, seconds.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Seconds to hold the connections open after the last one connected.
    #[arg(long, default_value_t = 3.0)]
    pub hold_seconds: f64,
}

// ---------------------------------------------------------------------------
// The broker's process: CPU and memory from /proc
// ---------------------------------------------------------------------------

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ; 100 on Linux, asked of getconf once).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, seconds (`pid` None: this process).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = read(&path);
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

/// CPU seconds (user + system) of this process's children that have exited
/// and been waited for: the spawned Kafka clients.
pub(crate) fn children_cpu_seconds() -> Option<f64> {
    let stat = read("/proc/self/stat");
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line: 13 and 14 after ')'.
    let ticks = f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

/// (rchar, wchar) of a process: bytes it read and wrote through system
/// calls, sockets included (for a broker: requests in, responses and log
/// writes out).
pub(crate) fn io_chars(pid: u32) -> Option<(u64, u64)> {
    let text = read(&format!("/proc/{pid}/io"));
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
    Some((field("rchar:")?, field("wchar:")?))
}

/// VmRSS of a process, bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()))
        .map(|kib| kib * 1024)
}

/// "Max open files" soft limit of a process.
pub(crate) fn nofile(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/limits"),
        None => "/proc/self/limits".into(),
    };
    read(&path).lines().find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
}

/// CPU of the broker and of the load generator (this process) over one run,
/// and the broker's peak RSS (sampled every 200 ms).
pub(crate) struct Probe {
    pid: Option<u32>,
    t0: Instant,
    broker_cpu0: Option<f64>,
    self_cpu0: Option<f64>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

pub(crate) struct ProbeResult {
    /// % of one core.
    pub(crate) broker_cpu: Option<f64>,
    pub(crate) self_cpu: Option<f64>,
    pub(crate) broker_rss_peak: Option<u64>,
}

impl Probe {
    pub(crate) fn start(pid: Option<u32>) -> Probe {
        let peak = Arc::new(AtomicU64::new(pid.and_then(rss).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = pid.and_then(|pid| {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-rss".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Some(r) = rss(pid) {
                            peak.fetch_max(r, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
                .ok()
        });
        Probe {
            pid,
            t0: Instant::now(),
            broker_cpu0: pid.and_then(|p| cpu_seconds(Some(p))),
            self_cpu0: cpu_seconds(None),
            peak,
            stop,
            sampler,
        }
    }

    pub(crate) fn finish(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let pct = |a: Option<f64>, b: Option<f64>| Some(100.0 * (b? - a?) / wall);
        let broker_cpu = pct(self.broker_cpu0, self.pid.and_then(|p| cpu_seconds(Some(p))));
        if let Some(r) = self.pid.and_then(rss) {
            self.peak.fetch_max(r, Ordering::Relaxed);
        }
        ProbeResult {
            broker_cpu,
            self_cpu: pct(self.self_cpu0, cpu_seconds(None)),
            broker_rss_peak: self.pid.map(|_| self.peak.load(Ordering::Relaxed)),
        }
    }
}

pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------
// Payload stamp
// ---------------------------------------------------------------------------

/// The process-wide clock origin of the payload stamps (publishers and
/// subscribers live in this one process).
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

pub(crate) const STAMP: usize = 20;

pub(crate) fn payload(size: usize, sent_ns: u64, seq: u64, publisher: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(sent_ns);
    b.put_u64_le(seq);
    b.put_u32_le(publisher);
    b.resize(size, 0x5A);
    b.freeze()
}

pub(crate) fn unstamp(p: &[u8]) -> Option<(u64, u64, u32)> {
    if p.len() < STAMP {
        return None;
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&p[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut a = [0u8; 4];
    a.copy_from_slice(&p[16..20]);
    Some((u64_at(0), u64_at(8), u32::from_le_bytes(a)))
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

/// What every client of a run adds to.
#[derive(Default)]
pub(crate) struct Counters {
    /// publish() calls that returned (the request reached the client's event loop queue).
    pub(crate) published: AtomicU64,
    /// Publishes completed: written to the socket (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2).
    pub(crate) completed: AtomicU64,
    /// Deliveries to subscribers (shared with the progress line).
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) received_bytes: AtomicU64,
    /// Deliveries whose sequence number was not above the last one seen from that publisher.
    pub(crate) out_of_order: AtomicU64,
    /// Connection errors, refused subscriptions, payloads without a stamp.
    pub(crate) errors: AtomicU64,
    /// ns (since `epoch`) of the last completion and of the last delivery.
    pub(crate) last_completed_ns: AtomicU64,
    pub(crate) last_received_ns: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(what);
        }
    }
    fn complete(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.last_completed_ns.fetch_max(now_ns(), Ordering::Relaxed);
    }
}

pub(crate) fn qos_of(q: u8) -> Result<QoS> {
    Ok(match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("QoS must be 0, 1 or 2, not {q}"),
    })
}

pub(crate) fn split_addr(addr: &str) -> Result<(String, u16)> {
    let (h, p) = addr.rsplit_once(':').with_context(|| format!("--mqtt {addr:?}: expected host:port"))?;
    Ok((h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().with_context(|| format!("--mqtt {addr:?}: bad port"))?))
}

struct ClientSpec<'a> {
    host: &'a str,
    port: u16,
    id: String,
    size: usize,
    inflight: u16,
    clean: bool,
}

fn client(spec: &ClientSpec) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(spec.id.clone(), spec.host, spec.port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(spec.clean);
    // Ten packet ids per window slot: see `drive_publisher`.
    o.set_inflight(spec.inflight.max(1).saturating_mul(10));
    let max = (spec.size + 1024).max(10 * 1024);
    o.set_max_packet_size(max, max);
    let (c, mut el) = AsyncClient::new(o, 64);
    let mut n = NetworkOptions::new();
    // Latency matters more than packets here (and the peers do the same).
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(10);
    el.set_network_options(n);
    (c, el)
}

/// Polls until CONNACK (and SUBACK when `subscribe` is set).
async fn establish(c: &AsyncClient, el: &mut EventLoop, subscribe: Option<(&str, QoS)>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut want_suback = false;
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll()).await.context("timed out waiting for CONNACK/SUBACK")?;
        match ev.context("connecting")? {
            Event::Incoming(Incoming::ConnAck(_)) => match subscribe {
                Some((topic, qos)) => {
                    c.subscribe(topic, qos).await.context("subscribe request")?;
                    want_suback = true;
                }
                None => return Ok(()),
            },
            Event::Incoming(Incoming::SubAck(s)) if want_suback => {
                if s.return_codes.iter().any(|r| matches!(r, rumqttc::SubscribeReasonCode::Failure)) {
                    bail!("the broker refused the subscription");
                }
                return Ok(());
            }
            _ => {}
        }
    }
}

pub(crate) struct Sub {
    client: AsyncClient,
    el: EventLoop,
    /// Publishers of the run (indexes the ordering check).
    publishers: usize,
}

pub(crate) struct Pub {
    client: AsyncClient,
    el: EventLoop,
    topic: String,
    index: u32,
    /// msg/s of this publisher (0 = flat out).
    rate: f64,
    /// Completions of this publisher (its driver counts them).
    completed: Arc<AtomicU64>,
}

async fn run_subscriber(mut s: Sub, ctr: Arc<Counters>, mut stop: watch::Receiver<bool>) -> Hist {
    let mut h = Hist::default();
    let mut last_seq = vec![0u64; s.publishers.max(1)];
    loop {
        tokio::select! {
            biased;
            ev = s.el.poll() => match ev {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let now = now_ns();
                    match unstamp(&p.payload) {
                        Some((sent, seq, publisher)) => {
                            h.record(now.saturating_sub(sent));
                            if let Some(l) = last_seq.get_mut(publisher as usize) {
                                if seq <= *l {
                                    ctr.out_of_order.fetch_add(1, Ordering::Relaxed);
                                }
                                *l = (*l).max(seq);
                            }
                        }
                        None => ctr.error("a delivery without the bench's stamp".into()),
                    }
                    ctr.received.fetch_add(1, Ordering::Relaxed);
                    ctr.received_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    ctr.last_received_ns.fetch_max(now, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    if !*stop.borrow() {
                        ctr.error(format!("subscriber connection: {e}"));
                    }
                    return h;
                }
            },
            _ = stop.changed() => break,
        }
    }
    goodbye(&s.client, &mut s.el).await;
    h
}

/// Sends DISCONNECT and polls until it is out (bounded).
async fn goodbye(c: &AsyncClient, el: &mut EventLoop) {
    if c.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Drives a publisher's event loop: counts completions (and hands their window
/// slot back) until told to say goodbye.
///
/// It also checks the client's packet ids: rumqttc 0.25 hands out ids 1..=its
/// in-flight setting in turn and, for QoS 2, considers an id free again once the
/// PUBREC arrived, although the flow still needs PUBREL/PUBCOMP; a broker then
/// takes the new PUBLISH for a duplicate of the unfinished one and drops it
/// (that is what the MQTT spec says to do). We give rumqttc ten times as many
/// ids as we let be in flight, so an id comes round again only long after its
/// flow ended; if one ever comes round early, it is counted as an error.
async fn drive_publisher(
    mut el: EventLoop,
    qos: QoS,
    ctr: Arc<Counters>,
    mine: Arc<AtomicU64>,
    window: Arc<Semaphore>,
    ending: Arc<AtomicBool>,
) {
    let mut open = vec![false; usize::from(el.mqtt_options.inflight()) + 1];
    let done = |pkid: u16, open: &mut Vec<bool>| {
        if let Some(o) = open.get_mut(usize::from(pkid)) {
            *o = false;
        }
        ctr.complete();
        mine.fetch_add(1, Ordering::Relaxed);
        window.add_permits(1);
    };
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if qos == QoS::AtMostOnce {
                    done(0, &mut open);
                } else if let Some(o) = open.get_mut(usize::from(pkid)) {
                    if *o {
                        ctr.error(format!("the client reused packet id {pkid} before its flow completed"));
                    }
                    *o = true;
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(a))) if qos == QoS::AtLeastOnce => done(a.pkid, &mut open),
            Ok(Event::Incoming(Incoming::PubComp(c))) if qos == QoS::ExactlyOnce => done(c.pkid, &mut open),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if !ending.load(Ordering::Relaxed) {
                    ctr.error(format!("publisher connection: {e}"));
                }
                return;
            }
        }
    }
}

/// Publishes until `until`, flat out or on schedule, with at most `window`
/// QoS 1/2 publishes unacknowledged, then waits (up to `drain`) for its
/// publishes to complete and disconnects.
#[allow(clippy::too_many_arguments)]
async fn run_publisher(
    p: Pub,
    qos: QoS,
    size: usize,
    window: u16,
    start: (tokio::time::Instant, u64),
    until: tokio::time::Instant,
    drain: Duration,
    ctr: Arc<Counters>,
    ending: Arc<AtomicBool>,
) {
    let (start, start_ns) = start;
    let Pub { client, el, topic, index, rate, completed } = p;
    // QoS 0 has no acknowledgement to wait for: the client's request queue is its only bound.
    let slots = Arc::new(Semaphore::new(if qos == QoS::AtMostOnce { Semaphore::MAX_PERMITS / 2 } else { usize::from(window.max(1)) }));
    let driver = tokio::spawn(drive_publisher(el, qos, ctr.clone(), completed.clone(), slots.clone(), ending.clone()));
    let publish = |sent_ns: u64, seq: u64| {
        let (client, topic, slots, ctr) = (&client, &topic, &slots, &ctr);
        async move {
            match slots.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return false,
            }
            if let Err(e) = client.publish_bytes(topic.clone(), qos, false, payload(size, sent_ns, seq, index)).await {
                ctr.error(format!("publish: {e}"));
                return false;
            }
            ctr.published.fetch_add(1, Ordering::Relaxed);
            true
        }
    };
    let mut seq = 0u64;
    'outer: loop {
        if rate > 0.0 {
            // Message k is due at start + k/rate and carries that time, even if
            // it goes out late (a full window, a slow client or broker).
            let due = Duration::from_secs_f64(seq as f64 / rate);
            if start + due >= until {
                break;
            }
            tokio::time::sleep_until(start + due).await;
            // Send everything that fell due (timers have ~1 ms granularity).
            loop {
                let due = Duration::from_secs_f64(seq as f64 / rate);
                if start + due > tokio::time::Instant::now() || start + due >= until {
                    break;
                }
                seq += 1;
                if !publish(start_ns + due.as_nanos() as u64, seq).await {
                    break 'outer;
                }
            }
        } else {
            if tokio::time::Instant::now() >= until {
                break;
            }
            seq += 1;
            if !publish(now_ns(), seq).await {
                break;
            }
            // The request channel rarely makes a flat-out publisher wait: yield
            // now and then so it cannot starve the event loops on its worker.
            if seq % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    // Let the in-flight publishes complete before saying goodbye.
    let deadline = tokio::time::Instant::now() + drain;
    while completed.load(Ordering::Relaxed) < seq && tokio::time::Instant::now() < deadline && !driver.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ending.store(true, Ordering::Relaxed);
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), driver).await.is_err() {
        ctr.error("publisher: no DISCONNECT within 2 s".into());
    }
}

pub struct RunResult {
    pub shape: Shape,
    pub qos: u8,
    pub rate: f64,
    pub published: u64,
    pub completed: u64,
    pub received: u64,
    pub expected: u64,
    pub errors: u64,
}

struct RunSpec<'a> {
    host: &'a str,
    port: u16,
    shape: Shape,
    qos: u8,
    n: usize,
    size: usize,
    rate: f64,
    seconds: f64,
    inflight: u16,
    drain: Duration,
    run_id: String,
    persistent: bool,
}

/// How the clients of one run connect: the broker, what they carry, and a
/// short run id for their client ids (MQTT 3.1.1 guarantees 23 characters).
pub(crate) struct Conn<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) size: usize,
    pub(crate) inflight: u16,
    pub(crate) short: &'a str,
}

impl Conn<'_> {
    fn spec(&self, id: String, clean: bool) -> ClientSpec<'_> {
        ClientSpec { host: self.host, port: self.port, id, size: self.size, inflight: self.inflight, clean }
    }
}

/// Connects one subscriber per filter, each subscribed (SUBACK) before this
/// returns. `publishers` sizes their ordering check.
pub(crate) async fn connect_subscribers(c: &Conn<'_>, filters: Vec<String>, qos: QoS, clean: bool, publishers: usize) -> Result<Vec<Sub>> {
    let mut setup = JoinSet::new();
    for (i, filter) in filters.into_iter().enumerate() {
        let (cl, mut el) = client(&c.spec(format!("s{}-{i}", c.short), clean));
        setup.spawn(async move {
            establish(&cl, &mut el, Some((&filter, qos))).await.with_context(|| format!("subscriber {i}"))?;
            anyhow::Ok(Sub { client: cl, el, publishers })
        });
    }
    let mut subs = Vec::new();
    while let Some(r) = setup.join_next().await {
        subs.push(r.context("subscriber setup panicked")??);
    }
    Ok(subs)
}

/// Starts the subscribers' loops; each returns its latency histogram once `stop` is sent.
pub(crate) fn start_subscribers(subs: Vec<Sub>, ctr: &Arc<Counters>, stop: &watch::Receiver<bool>) -> JoinSet<Hist> {
    let mut tasks = JoinSet::new();
    for s in subs {
        tasks.spawn(run_subscriber(s, ctr.clone(), stop.clone()));
    }
    tasks
}

/// Stops the subscribers and merges their latencies.
pub(crate) async fn stop_subscribers(mut tasks: JoinSet<Hist>, stop: watch::Sender<bool>) -> Result<Hist> {
    let _ = stop.send(true);
    let mut h = Hist::default();
    while let Some(r) = tasks.join_next().await {
        h.merge(&r.context("subscriber panicked")?);
    }
    Ok(h)
}

/// Connecting again with clean session 1 discards each persistent session
/// the subscribers `s<short>-0..n` left behind.
pub(crate) async fn discard_sessions(c: &Conn<'_>, n: usize) {
    let mut gone = JoinSet::new();
    for i in 0..n {
        let (cl, mut el) = client(&c.spec(format!("s{}-{i}", c.short), true));
        gone.spawn(async move {
            if establish(&cl, &mut el, None).await.is_ok() {
                goodbye(&cl, &mut el).await;
            }
        });
    }
    while gone.join_next().await.is_some() {}
}

/// Connects one publisher per topic (CONNACK before this returns), each to
/// publish `rate_each` msg/s (0: flat out).
pub(crate) async fn connect_publishers(c: &Conn<'_>, topics: Vec<String>, rate_each: f64) -> Result<Vec<Pub>> {
    let mut setup = JoinSet::new();
    for (i, topic) in topics.into_iter().enumerate() {
        let (cl, mut el) = client(&c.spec(format!("p{}-{i}", c.short), true));
        setup.spawn(async move {
            establish(&cl, &mut el, None).await.with_context(|| format!("publisher {i}"))?;
            anyhow::Ok(Pub { client: cl, el, topic, index: i as u32, rate: rate_each, completed: Arc::new(AtomicU64::new(0)) })
        });
    }
    let mut pubs = Vec::new();
    while let Some(r) = setup.join_next().await {
        pubs.push(r.context("publisher setup panicked")??);
    }
    Ok(pubs)
}

/// The clock of one run's publishing phase: it starts a moment from now
/// (every publisher gets the same start), as a tokio instant and as ns of
/// `epoch` (the payload stamps' clock), and ends `seconds` later.
pub(crate) fn run_clock(seconds: f64) -> (tokio::time::Instant, u64, tokio::time::Instant) {
    let base = Instant::now() + Duration::from_millis(20);
    let start = tokio::time::Instant::from_std(base);
    let t0_ns = base.duration_since(epoch()).as_nanos() as u64;
    (start, t0_ns, start + Duration::from_secs_f64(seconds))
}

/// Publishes with every publisher for `seconds` (see `run_publisher`) and
/// waits until each has drained and disconnected. Returns the start of the
/// run on the stamps' clock.
pub(crate) async fn publish_all(
    pubs: Vec<Pub>,
    qos: QoS,
    size: usize,
    inflight: u16,
    seconds: f64,
    drain: Duration,
    ctr: &Arc<Counters>,
) -> Result<u64> {
    let (start, t0_ns, until) = run_clock(seconds);
    let ending = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for p in pubs {
        tasks.spawn(run_publisher(p, qos, size, inflight, (start, t0_ns), until, drain, ctr.clone(), ending.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.context("publisher panicked")?;
    }
    Ok(t0_ns)
}

/// Deliveries still under way after publishing stopped: waits until
/// `received` reaches `expected`, or nothing arrived for 2 s, or `drain` is over.
pub(crate) async fn await_deliveries(received: &AtomicU64, expected: u64, drain: Duration) {
    let drain_end = tokio::time::Instant::now() + drain;
    let mut last = (received.load(Ordering::Relaxed), tokio::time::Instant::now());
    loop {
        let got = received.load(Ordering::Relaxed);
        if got >= expected || tokio::time::Instant::now() >= drain_end {
            break;
        }
        if got != last.0 {
            last = (got, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets up the clients of one run, publishes, drains, and measures.
async fn one_run(spec: &RunSpec<'_>, ctr: Arc<Counters>) -> Result<(Hist, Duration, Duration, u64)> {
    let _ = epoch();
    let qos = qos_of(spec.qos)?;
    let prefix = format!("pmqb/{}", spec.run_id);
    // Client ids stay within MQTT 3.1.1's guaranteed 23 characters.
    let short = &spec.run_id[..spec.run_id.len().min(8)];
    let conn = Conn { host: spec.host, port: spec.port, size: spec.size, inflight: spec.inflight, short };
    // (subscriber filter, publishers it hears) and (publisher topic)
    let (subs, pubs, fan): (Vec<String>, Vec<String>, u64) = match spec.shape {
        Shape::FanIn => (vec![format!("{prefix}/in/+")], (0..spec.n).map(|i| format!("{prefix}/in/{i}")).collect(), 1),
        Shape::FanOut => (vec![format!("{prefix}/out"); spec.n], vec![format!("{prefix}/out")], spec.n as u64),
        Shape::Pairs => {
            ((0..spec.n).map(|i| format!("{prefix}/p/{i}")).collect(), (0..spec.n).map(|i| format!("{prefix}/p/{i}")).collect(), 1)
        }
    };
    let subs_count = subs.len();
    let per_pub_rate = if spec.rate > 0.0 { spec.rate / pubs.len() as f64 } else { 0.0 };

    // Subscribers first, each subscribed before anyone publishes.
    let ready_subs = connect_subscribers(&conn, subs, qos, !spec.persistent, pubs.len()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_tasks = start_subscribers(ready_subs, &ctr, &stop_rx);
    let ready_pubs = connect_publishers(&conn, pubs, per_pub_rate).await?;
    let t0_ns = publish_all(ready_pubs, qos, spec.size, spec.inflight, spec.seconds, spec.drain, &ctr).await?;
    let expected = ctr.published.load(Ordering::Relaxed) * fan;
    await_deliveries(&ctr.received, expected, spec.drain).await;
    let h = stop_subscribers(sub_tasks, stop_tx).await?;
    if spec.persistent {
        discard_sessions(&conn, subs_count).await;
    }
    let end_ns = |t: u64| Duration::from_nanos(t.saturating_sub(t0_ns));
    Ok((h, end_ns(ctr.last_completed_ns.load(Ordering::Relaxed)), end_ns(ctr.last_received_ns.load(Ordering::Relaxed)), expected))
}

pub(crate) fn run_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:04x}", (t / 1000) as u64 & 0xFFFF_FFFF, std::process::id() & 0xFFFF)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The end-to-end latency columns of a row, ms.
pub(crate) fn latency_cols(row: Row, h: &Hist) -> Row {
    row.num("p50_ms", q_ms(h, 0.5), 2).num("p99_ms", q_ms(h, 0.99), 2).num("p99.9_ms", q_ms(h, 0.999), 2).num("max_ms", q_ms(h, 1.0), 2)
}

/// The broker's CPU and peak RSS and this load generator's CPU over a run.
pub(crate) fn probe_cols(row: Row, p: &ProbeResult) -> Row {
    row.num("broker_cpu%", p.broker_cpu.unwrap_or(f64::NAN), 0)
        .num("broker_rss_MiB", p.broker_rss_peak.map(mib).unwrap_or(f64::NAN), 1)
        .num("bench_cpu%", p.self_cpu.unwrap_or(f64::NAN), 0)
}

/// A latency quantile in ms; NaN (printed `NaN`, JSON null) when nothing was measured.
pub(crate) fn q_ms(h: &Hist, q: f64) -> f64 {
    if h.count() == 0 {
        f64::NAN
    } else {
        ms(h.quantile(q))
    }
}

/// Runs every (scenario, QoS, rate) combination against the broker at `a.mqtt`.
pub fn run(rt: &Runtime, rep: &Reporter, a: &MqttArgs) -> Result<Vec<RunResult>> {
    let (host, port) = split_addr(&a.mqtt)?;
    let label = a.label.clone().unwrap_or_else(|| a.mqtt.clone());
    if a.size < STAMP {
        bail!("--size must be at least {STAMP} (the payload carries the send time, publisher and sequence number)");
    }
    for &q in &a.qos {
        qos_of(q)?;
    }
    rep.facts(
        "mqtt settings",
        &Row::new()
            .put("broker", label.clone())
            .put("address", a.mqtt.clone())
            .put("broker_pid", a.broker_pid.map(|p| p.to_string()).unwrap_or_else(|| "- (no broker CPU/RSS)".into()))
            .put(
                "client",
                if a.persistent {
                    "rumqttc 0.25, MQTT 3.1.1, subscribers persistent (clean session 0), publishers clean, keep-alive 60 s, TCP_NODELAY"
                } else {
                    "rumqttc 0.25, MQTT 3.1.1, clean session, keep-alive 60 s, TCP_NODELAY"
                },
            )
            .put("size", a.size)
            .put("seconds", format!("{} per run", a.seconds))
            .put("inflight", a.inflight as u64)
            .put("latency", "publish call (rate mode: scheduled send time) to delivery, same process clock")
            .put("rates", "sent = publishes completed (QoS 0 written, QoS 1 PUBACK, QoS 2 PUBCOMP) / time to the last one; recv = deliveries / time to the last one")
            .put("cpu%", "% of one core over the run (setup and drain included); bench% is this load generator"),
    );
    let mut table = Table::new(format!("mqtt: {label}"));
    let mut out = Vec::new();
    let mut failed = 0;
    for &shape in &a.scenario {
        for &qos in &a.qos {
            for &rate in &a.rate {
                let n = if shape == Shape::Pairs { a.pairs } else { a.clients };
                let pre = before_run();
                let ctr = Arc::new(Counters::default());
                let mode = if rate > 0.0 { format!("rate={rate}") } else { "max".to_owned() };
                let spec = RunSpec {
                    host: &host,
                    port,
                    shape,
                    qos,
                    n,
                    size: a.size,
                    rate,
                    seconds: a.seconds,
                    inflight: a.inflight,
                    drain: Duration::from_secs_f64(a.drain_seconds),
                    run_id: run_id(),
                    persistent: a.persistent,
                };
                let probe = Probe::start(a.broker_pid);
                let progress = Progress::start(format!("{label} {} qos{qos} {mode}", shape.name()), "msg recv", ctr.received.clone());
                let r = rt.block_on(one_run(&spec, ctr.clone()));
                drop(progress);
                let p = probe.finish();
                let (h, t_sent, t_recv, expected) = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // One broken run (a refused connection, a closed socket) must not
                        // hide the others: say what failed and go on.
                        rep.note(&format!("{label} {} qos{qos} {mode}: FAILED: {e:#}", shape.name()));
                        failed += 1;
                        continue;
                    }
                };
                let published = ctr.published.load(Ordering::Relaxed);
                let completed = ctr.completed.load(Ordering::Relaxed);
                let received = ctr.received.load(Ordering::Relaxed);
                let errors = ctr.errors.load(Ordering::Relaxed);
                let per_s = |n: u64, t: Duration| if t.is_zero() { 0.0 } else { n as f64 / t.as_secs_f64() };
                let mb_s = |n: u64, t: Duration| per_s(n, t) * a.size as f64 / 1e6;
                let lost = expected.saturating_sub(received);
                let mut row = Row::new()
                    .put("broker", label.clone())
                    .put("scenario", shape.name())
                    .put("qos", qos as u64)
                    .put("clients", n)
                    .put("size", a.size)
                    .put("mode", mode.clone())
                    .put("session", if a.persistent { "persistent" } else { "clean" })
                    .num("sent/s", per_s(completed, t_sent), 0)
                    .num("sent_MB/s", mb_s(completed, t_sent), 1)
                    .num("recv/s", per_s(received, t_recv), 0)
                    .num("recv_MB/s", mb_s(received, t_recv), 1)
                    .put("published", published)
                    .put("received", received)
                    .num("lost%", if expected == 0 { 0.0 } else { 100.0 * lost as f64 / expected as f64 }, 2)
                    .put("ooo", ctr.out_of_order.load(Ordering::Relaxed))
                    .put("errors", errors);
                row = probe_cols(latency_cols(row, &h), &p).pre_with_broker(pre, p.broker_cpu);
                rep.row(&mut table, row);
                if let Some(e) = ctr.first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    rep.note(&format!("{label} {} qos{qos} {mode}: {errors} error(s), the first: {e}", shape.name()));
                }
                out.push(RunResult { shape, qos, rate, published, completed, received, expected, errors });
            }
        }
    }
    rep.flush_table(&mut table);
    if failed > 0 {
        bail!("{failed} MQTT run(s) against {label} failed (see the notes above)");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Connection scale: N idle connections
// ---------------------------------------------------------------------------

/// MQTT 3.1.1 CONNECT: clean session, no will, no credentials.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let remaining = 10 + 2 + id.len();
    let mut p = Vec::with_capacity(2 + remaining + 2);
    p.push(0x10);
    let mut r = remaining;
    loop {
        let mut byte = (r % 128) as u8;
        r /= 128;
        if r > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if r == 0 {
            break;
        }
    }
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    p.extend_from_slice(&keep_alive.to_be_bytes());
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Connects one idle client from `source`; returns the stream after a successful CONNACK.
async fn connect_idle(broker: SocketAddr, source: Ipv4Addr, id: &str, keep_alive: u16) -> Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if source != Ipv4Addr::LOCALHOST {
        sock.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))).with_context(|| format!("binding {source}"))?;
    }
    let mut s = sock.connect(broker).await.context("TCP connect")?;
    s.set_nodelay(true)?;
    s.write_all(&connect_packet(id, keep_alive)).await.context("sending CONNECT")?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.context("reading CONNACK")?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        bail!("expected CONNACK, got {:02x?}", ack);
    }
    if ack[3] != 0 {
        bail!("CONNACK refused the connection (return code {})", ack[3]);
    }
    Ok(s)
}

/// Holds one connection: a PINGREQ every keep-alive, until stopped (then
/// DISCONNECT). Returns false if the broker closed it first.
async fn hold(mut s: tokio::net::TcpStream, keep_alive: u16, mut stop: watch::Receiver<bool>) -> bool {
    let mut buf = [0u8; 64];
    // Ping a little before the keep-alive is due; the broker allows 1.5x.
    let every = Duration::from_millis(u64::from(keep_alive.max(1)) * 900);
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = s.write_all(&DISCONNECT).await;
                return true;
            }
            _ = tokio::time::sleep_until(next) => {
                next += every;
                if s.write_all(&PINGREQ).await.is_err() {
                    return false;
                }
            }
            r = s.read(&mut buf) => match r {
                // PINGRESPs; anything else is ignored.
                Ok(n) if n > 0 => {}
                _ => return false,
            },
        }
    }
}

pub struct ConnsResult {
    pub count: usize,
    pub failed: u64,
    pub dropped: u64,
}

pub fn conns(rt: &Runtime, rep: &Reporter, a: &ConnsArgs) -> Result<Vec<ConnsResult>> {
    let broker: SocketAddr = a.mqtt.parse().with_context(|| format!("--mqtt {:?}: expected ipv4:port", a.mqtt))?;
    if !broker.is_ipv4() {
        bail!("mqtt-conns needs an IPv4 broker address");
    }
    let label = a.label.clone().unwrap_or_else(|| a.mqtt.clone());
    let mine = nofile(None).unwrap_or(0);
    let theirs = a.broker_pid.and_then(|p| nofile(Some(p)));
    rep.facts(
        "mqtt-conns settings",
        &Row::new()
            .put("broker", label.clone())
            .put("address", a.mqtt.clone())
            .put("keep_alive_s", a.keep_alive as u64)
            .put("concurrency", a.concurrency)
            .put(
                "client",
                "plain sockets: MQTT 3.1.1 CONNECT (clean session), wait for CONNACK, then idle with PINGREQ every 0.9 x keep-alive",
            )
            .put("open_files_limit", format!("bench {mine}, broker {}", theirs.map(|n| n.to_string()).unwrap_or_else(|| "?".into())))
            .put("rss_per_conn", "(broker RSS with the connections held, after 1 s) - (RSS before), / count"),
    );
    let mut table = Table::new(format!("mqtt-conns: {label}"));
    let mut out = Vec::new();
    for &count in &a.count {
        let limit = theirs.map_or(mine, |t| t.min(mine));
        if limit > 0 && count as u64 + 64 > limit {
            bail!("{count} connections need more open files than the limit allows ({limit}); raise `ulimit -n` for both processes or use a smaller --count");
        }
        let ips = if a.source_ips == 0 { count.div_ceil(25_000).max(1) } else { a.source_ips as usize };
        if ips > 254 {
            bail!("too many source addresses ({ips})");
        }
        let pre = before_run();
        let rss0 = a.broker_pid.and_then(rss);
        let probe = Probe::start(a.broker_pid);
        let done = Arc::new(AtomicU64::new(0));
        let progress = Progress::start(format!("{label} connect {count}"), "conn", done.clone());
        let id = run_id();
        let ka = a.keep_alive;
        let conc = a.concurrency.max(1);
        let hold_for = Duration::from_secs_f64(a.hold_seconds);
        let res: Result<_> = rt.block_on(async {
            let (stop_tx, stop_rx) = watch::channel(false);
            let gate = Arc::new(Semaphore::new(conc));
            let failures = Arc::new(AtomicU64::new(0));
            let first_err: Arc<Mutex<Option<String>>> = Arc::default();
            let lat = Arc::new(Mutex::new(Hist::default()));
            let mut holders = JoinSet::new();
            let t0 = Instant::now();
            for i in 0..count {
                let permit = gate.clone().acquire_owned().await.context("semaphore")?;
                let src = Ipv4Addr::new(127, 0, 0, 1 + (i % ips) as u8);
                let cid = format!("c{}-{i}", &id[..id.len().min(8)]);
                let (stop_rx, failures, first_err, lat, done) =
                    (stop_rx.clone(), failures.clone(), first_err.clone(), lat.clone(), done.clone());
                holders.spawn(async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(Duration::from_secs(30), connect_idle(broker, src, &cid, ka)).await;
                    drop(permit);
                    match r {
                        Ok(Ok(s)) => {
                            lat.lock().unwrap_or_else(|p| p.into_inner()).record(t.elapsed().as_nanos() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            Some(hold(s, ka, stop_rx).await)
                        }
                        Ok(Err(e)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            first_err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("{e:#}"));
                            None
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            first_err.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| "no CONNACK within 30 s".into());
                            None
                        }
                    }
                });
            }
            // Every connect finished (or failed) once all permits are back.
            let _all = gate.acquire_many(conc as u32).await.context("semaphore")?;
            let connect_time = t0.elapsed();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss_held = a.broker_pid.and_then(rss);
            tokio::time::sleep(hold_for).await;
            let rss_end = a.broker_pid.and_then(rss);
            let _ = stop_tx.send(true);
            let mut dropped = 0u64;
            while let Some(r) = holders.join_next().await {
                if let Ok(Some(false)) = r {
                    dropped += 1;
                }
            }
            let h = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let e = first_err.lock().unwrap_or_else(|p| p.into_inner()).take();
            anyhow::Ok((connect_time, rss_held, rss_end, failures.load(Ordering::Relaxed), dropped, h, e))
        });
        drop(progress);
        let p = probe.finish();
        let (connect_time, rss_held, rss_end, failures, dropped, h, first_err) = res?;
        // Give the broker a moment to free the closed sessions.
        std::thread::sleep(Duration::from_millis(500));
        let rss_after = a.broker_pid.and_then(rss);
        let ok = count as u64 - failures;
        let per_conn = match (rss0, rss_held) {
            (Some(a), Some(b)) if ok > 0 => (b as f64 - a as f64) / ok as f64,
            _ => f64::NAN,
        };
        let opt_mib = |b: Option<u64>| b.map(mib).unwrap_or(f64::NAN);
        let row = Row::new()
            .put("broker", label.clone())
            .put("conns", count)
            .put("source_ips", ips)
            .put("connected", ok)
            .put("failed", failures)
            .put("dropped", dropped)
            .num("connect_s", connect_time.as_secs_f64(), 2)
            .num("conn/s", ok as f64 / connect_time.as_secs_f64().max(1e-9), 0)
            .num("connect_p50_ms", q_ms(&h, 0.5), 2)
            .num("connect_p99_ms", q_ms(&h, 0.99), 2)
            .num("rss_before_MiB", opt_mib(rss0), 1)
            .num("rss_held_MiB", opt_mib(rss_held), 1)
            .num("rss_end_MiB", opt_mib(rss_end), 1)
            .num("rss_closed_MiB", opt_mib(rss_after), 1)
            .num("bytes/conn", per_conn, 0)
            .num("broker_cpu%", p.broker_cpu.unwrap_or(f64::NAN), 0)
            .num("bench_cpu%", p.self_cpu.unwrap_or(f64::NAN), 0)
            .pre_with_broker(pre, p.broker_cpu);
        rep.row(&mut table, row);
        if let Some(e) = first_err {
            rep.note(&format!("{label} {count} connections: {failures} failed, the first: {e}"));
        }
        out.push(ConnsResult { count, failed: failures, dropped });
    }
    rep.flush_table(&mut table);
    Ok(out)
}

// ---------------------------------------------------------------------------
// In-process polymq (smoke)
// ---------------------------------------------------------------------------

/// A polymq server with one protocol service (MQTT or AMQP), on
/// 127.0.0.1:<any port>, in this process's runtime. `stop` shuts it down.
pub struct InProcess {
    pub addr: SocketAddr,
    /// Every service's address, by protocol name ("mqtt", "amqp", "kafka").
    pub addrs: Vec<(&'static str, SocketAddr)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), polymq::server::ServerError>>>,
}

impl InProcess {
    /// The MQTT service.
    pub fn start(rt: &Runtime, store: Arc<polymq::Store>) -> Result<InProcess> {
        let config = polymq::config::Config { http_listen: "127.0.0.1:0".parse().context("address")?, ..Default::default() };
        let svc = rt.block_on(polymq_mqtt::MqttService::new(store.clone(), polymq_mqtt::MqttConfig::from_config(&config)))?;
        InProcess::serve(rt, store, svc)
    }

    /// Any protocol service, on a loopback port of its own.
    pub fn serve(rt: &Runtime, store: Arc<polymq::Store>, svc: Arc<dyn polymq::server::ProtocolService>) -> Result<InProcess> {
        InProcess::serve_all(rt, store, vec![svc])
    }

    /// Several protocol services over one store (as `polymq serve` runs
    /// them), each on a loopback port of its own.
    pub fn serve_all(rt: &Runtime, store: Arc<polymq::Store>, svcs: Vec<Arc<dyn polymq::server::ProtocolService>>) -> Result<InProcess> {
        rt.block_on(async {
            let config = polymq::config::Config { http_listen: "127.0.0.1:0".parse().context("address")?, ..Default::default() };
            let listen: SocketAddr = "127.0.0.1:0".parse().context("address")?;
            let server = polymq::server::Server::bind(&config, store, svcs.into_iter().map(|s| (listen, s)).collect()).await?;
            let addrs = server.local_addrs();
            let addr = addrs.first().map(|(_, a)| *a).context("no listener")?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.run(async move {
                let _ = rx.await;
            }));
            anyhow::Ok(InProcess { addr, addrs, stop: Some(tx), task: Some(task) })
        })
    }

    /// Stops accepting, drains and closes the store.
    pub fn stop(mut self, rt: &Runtime) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            rt.block_on(t).context("server task panicked")??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let p = payload(100, 123_456_789, 42, 7);
        assert_eq!(p.len(), 100);
        assert_eq!(unstamp(&p), Some((123_456_789, 42, 7)));
        assert_eq!(unstamp(&p[..19]), None);
    }

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("abc", 60);
        assert_eq!(p, [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'a', b'b', b'c']);
        let long = connect_packet(&"x".repeat(200), 60);
        // Remaining length 212 takes two bytes: 0xD4 0x01.
        assert_eq!(&long[..3], &[0x10, 0xD4, 0x01]);
        assert_eq!(long.len(), 3 + 212);
    }
}
