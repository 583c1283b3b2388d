//! Output: a human table on stdout, or JSON lines with `--json`; a progress
//! line on stderr while a measurement runs; the machine facts every report
//! starts with (numbers mean nothing without the machine they came from).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One cell of a result row.
#[derive(Clone, Debug)]
pub enum Val {
    Str(String),
    Int(u64),
    /// A float printed with this many decimals in the table.
    Num(f64, usize),
}

impl Val {
    fn table(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Int(n) => group_thousands(*n),
            Val::Num(x, 0) if x.is_finite() && *x >= 0.0 => group_thousands(x.round() as u64),
            Val::Num(x, d) => format!("{x:.*}", d),
        }
    }
    fn json(&self) -> String {
        match self {
            Val::Str(s) => json_string(s),
            Val::Int(n) => n.to_string(),
            Val::Num(x, _) if x.is_finite() => format!("{x}"),
            Val::Num(..) => "null".into(),
        }
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Str(s.to_owned())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Str(s)
    }
}
impl From<u64> for Val {
    fn from(n: u64) -> Val {
        Val::Int(n)
    }
}
impl From<u32> for Val {
    fn from(n: u32) -> Val {
        Val::Int(n as u64)
    }
}
impl From<usize> for Val {
    fn from(n: usize) -> Val {
        Val::Int(n as u64)
    }
}

/// A result row: ordered (column, value) pairs.
#[derive(Clone, Debug, Default)]
pub struct Row(pub Vec<(&'static str, Val)>);

impl Row {
    pub fn new() -> Row {
        Row(Vec::new())
    }
    pub fn put(mut self, k: &'static str, v: impl Into<Val>) -> Row {
        self.0.push((k, v.into()));
        self
    }
    pub fn num(self, k: &'static str, x: f64, decimals: usize) -> Row {
        self.put(k, Val::Num(x, decimals))
    }
    /// How busy the machine was before the measurement (busy%) and how
    /// much CPU other processes took during it (others%).
    pub fn pre(self, p: Pre) -> Row {
        self.num("busy%", p.busy, 0).num("others%", p.others_pct(), 0).num("load1", p.load1, 2)
    }
    /// As `pre`, for a run against a broker in another process: that
    /// process's CPU (`broker_pct`, % of one core) is part of the run, not
    /// "other work", so it is taken out of others%.
    pub fn pre_with_broker(self, p: Pre, broker_pct: Option<f64>) -> Row {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let others = (p.others_pct() - broker_pct.unwrap_or(0.0) / cores).max(0.0);
        self.num("busy%", p.busy, 0).num("others%", others, 0).num("load1", p.load1, 2)
    }
    /// Microseconds from nanoseconds, one decimal (latency columns).
    pub fn us(self, k: &'static str, ns: u64) -> Row {
        self.num(k, ns as f64 / 1000.0, 1)
    }
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Collects rows per table and prints them: JSON lines at once (so a long
/// run streams), human tables when the table is complete.
pub struct Reporter {
    json: bool,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter { json }
    }

    /// A key/value block (machine facts, a scenario's settings).
    pub fn facts(&self, kind: &str, row: &Row) {
        if self.json {
            self.json_line(kind, row);
            return;
        }
        let w = row.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "== {kind}");
        for (k, v) in &row.0 {
            let _ = writeln!(out, "  {k:<w$}  {}", v.table());
        }
        let _ = writeln!(out);
    }

    /// One result row; in table mode it is kept until `flush_table`.
    pub fn row(&self, table: &mut Table, row: Row) {
        if self.json {
            self.json_line(&table.name, &row);
        }
        table.rows.push(row);
    }

    pub fn flush_table(&self, table: &mut Table) {
        if self.json || table.rows.is_empty() {
            table.rows.clear();
            return;
        }
        // Columns in first-seen order across all rows.
        let mut cols: Vec<&'static str> = Vec::new();
        for r in &table.rows {
            for (k, _) in &r.0 {
                if !cols.contains(k) {
                    cols.push(k);
                }
            }
        }
        let cells: Vec<Vec<String>> = table
            .rows
            .iter()
            .map(|r| cols.iter().map(|c| r.0.iter().find(|(k, _)| k == c).map(|(_, v)| v.table()).unwrap_or_else(|| "-".into())).collect())
            .collect();
        let widths: Vec<usize> =
            cols.iter().enumerate().map(|(i, c)| cells.iter().map(|r| r[i].len()).max().unwrap_or(0).max(c.len())).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "== {}", table.name);
        let head: Vec<String> = cols.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        let _ = writeln!(out, "{}", head.join("  "));
        for r in &cells {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  "));
        }
        let _ = writeln!(out);
        table.rows.clear();
    }

    fn json_line(&self, kind: &str, row: &Row) {
        let mut s = format!("{{\"kind\":{}", json_string(kind));
        for (k, v) in &row.0 {
            s.push(',');
            s.push_str(&json_string(k));
            s.push(':');
            s.push_str(&v.json());
        }
        s.push('}');
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    /// Free text for humans (notes, the dd command line); JSON gets it as a note.
    pub fn note(&self, text: &str) {
        if self.json {
            self.json_line("note", &Row::new().put("text", text));
        } else {
            println!("{text}");
        }
    }
}

pub struct Table {
    pub name: String,
    rows: Vec<Row>,
}

impl Table {
    pub fn new(name: impl Into<String>) -> Table {
        Table { name: name.into(), rows: Vec::new() }
    }
}

/// A once-a-second progress line on stderr, from a plain thread so it costs
/// the runtime under test nothing but one atomic load per second.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `done` counts finished operations; `unit` names them ("msg", "declares").
    pub fn start(label: String, unit: &'static str, done: Arc<AtomicU64>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let tty = std::io::stderr().is_terminal();
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let start = Instant::now();
                let mut last = (Instant::now(), done.load(Ordering::Relaxed));
                let mut ticks = 0u64;
                while !stop2.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.0.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    ticks += 1;
                    let now = (Instant::now(), done.load(Ordering::Relaxed));
                    let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                    last = now;
                    let line = format!("[{label}] {:>5.1}s  {} {unit}  {:.0} {unit}/s", start.elapsed().as_secs_f64(), now.1, rate);
                    // A terminal gets one line rewritten in place; a log file a line every 5 s.
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else if ticks % 5 == 0 {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprint!("\r\x1b[2K");
                }
            })
            .ok();
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- machine facts ----

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn cpu_model() -> String {
    read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

fn meminfo_kib(key: &str) -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start_matches(':').split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// (total, idle) jiffies across all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let stat = read("/proc/stat");
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: idle + iowait count as idle.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (v.iter().take(8).sum(), idle)
}

/// Share of all CPUs busy over the next `over` (0..=100).
pub fn cpu_busy(over: Duration) -> f64 {
    let a = cpu_jiffies();
    std::thread::sleep(over);
    let b = cpu_jiffies();
    let total = b.0.saturating_sub(a.0);
    if total == 0 {
        return 0.0;
    }
    100.0 * (1.0 - b.1.saturating_sub(a.1) as f64 / total as f64)
}

/// The state of the machine just before a measurement, and the CPU
/// counters to tell afterwards how much other work ran during it.
#[derive(Clone, Copy, Debug)]
pub struct Pre {
    /// CPU % busy (all cores) over 300 ms, with nothing of ours running.
    pub busy: f64,
    pub load1: f64,
    /// (total, idle) jiffies of the machine and this process's own CPU
    /// jiffies when the measurement started.
    start: ((u64, u64), u64),
}

/// This process's CPU time (all threads, user + system), in jiffies.
fn self_jiffies() -> u64 {
    let stat = read("/proc/self/stat");
    // The command name may hold spaces; fields are counted after its ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

impl Pre {
    /// Share of the machine's CPU that something other than this process
    /// used since the measurement started (0..=100). Kernel threads doing
    /// our writeback count as "other" too, so a few % is normal for disk-heavy
    /// runs; tens of % mean another job competed and the row is suspect.
    pub fn others_pct(&self) -> f64 {
        let ((t0, i0), s0) = self.start;
        let (t1, i1) = cpu_jiffies();
        let s1 = self_jiffies();
        let total = t1.saturating_sub(t0);
        if total == 0 {
            return 0.0;
        }
        let busy = total.saturating_sub(i1.saturating_sub(i0));
        100.0 * busy.saturating_sub(s1.saturating_sub(s0)) as f64 / total as f64
    }
}

static WAIT_IDLE_MS: AtomicU64 = AtomicU64::new(0);
/// Smoke runs skip the busy sampling: their numbers mean nothing anyway.
static SAMPLE_BUSY: AtomicBool = AtomicBool::new(true);

pub fn set_sample_busy(on: bool) {
    SAMPLE_BUSY.store(on, Ordering::Relaxed);
}

/// Sets `--wait-idle`: how long a run may wait for other work on the machine to stop.
pub fn set_wait_idle(d: Duration) {
    WAIT_IDLE_MS.store(d.as_millis() as u64, Ordering::Relaxed);
}

/// Called before each measurement: how busy the machine is with other
/// work (CPU % over half a second), after waiting up to `--wait-idle` for
/// it to fall under 10 %. A busy machine is reported, never hidden: the
/// rows carry `busy%` so a skewed number can be told from a real one.
pub fn before_run() -> Pre {
    if !SAMPLE_BUSY.load(Ordering::Relaxed) {
        return Pre { busy: f64::NAN, load1: load1(), start: (cpu_jiffies(), self_jiffies()) };
    }
    let limit = Duration::from_millis(WAIT_IDLE_MS.load(Ordering::Relaxed));
    let start = Instant::now();
    let mut warned = false;
    loop {
        let busy = cpu_busy(Duration::from_millis(300));
        if busy < 10.0 || start.elapsed() >= limit {
            if busy >= 10.0 {
                eprintln!("warning: the machine is {busy:.0}% busy with other work (load {}); numbers will be skewed", loadavg());
            }
            return Pre { busy, load1: load1(), start: (cpu_jiffies(), self_jiffies()) };
        }
        if !warned {
            eprintln!("waiting up to {:.0} s for the machine to go idle ({busy:.0}% busy, load {})", limit.as_secs_f64(), loadavg());
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// The 1-minute load average: other builds on this machine skew numbers.
pub fn load1() -> f64 {
    read("/proc/loadavg").split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

pub fn loadavg() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn status_kib(key: &str) -> u64 {
    read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()))
        .unwrap_or(0)
}

/// This process's resident set, in bytes.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// This process's peak resident set so far, in bytes.
pub fn rss_peak_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// `df -T` of the data dir: device, type and free space.
fn filesystem(dir: &Path) -> String {
    let out = std::process::Command::new("df").arg("-T").arg(dir).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let Some(line) = text.lines().nth(1) else { return "unknown".into() };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 7 {
                let avail_gib = f[4].parse::<u64>().unwrap_or(0) as f64 / (1024.0 * 1024.0);
                format!("{} {} on {} ({avail_gib:.0} GiB free)", f[0], f[1], f[6])
            } else {
                line.to_owned()
            }
        }
        _ => "unknown (df failed)".into(),
    }
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| {
            format!("unix {}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
        })
}

pub fn machine(data_dir: &Path) -> Row {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Row::new()
        .put("date", utc_now())
        .put("nproc", cores)
        .put("cpu", cpu_model())
        .num("mem_gib", meminfo_kib("MemTotal") as f64 / (1024.0 * 1024.0), 1)
        .put("kernel", read("/proc/sys/kernel/osrelease").trim().to_owned())
        .put("data_dir", data_dir.display().to_string())
        .put("filesystem", filesystem(data_dir))
        .put("loadavg", loadavg())
        .put("note", format!("in-process: the load generator shares the {cores} cores with the store"))
}
