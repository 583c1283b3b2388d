//! Many idle queues: what one costs in memory, how fast they are declared,
//! and what a restart with all of them costs (replay time and memory).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use polymq::queue::QueueOptions;
use polymq::FsyncPolicy;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::load::{close_store, open_store, parse_fsync};
use crate::report::{before_run, rss_bytes, rss_peak_bytes, Progress, Reporter, Row, Table};
use crate::Scratch;

#[derive(Args, Debug, Clone)]
pub struct QueuesArgs {
    /// How many queues to declare (comma separated: one run each).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    pub count: Vec<u64>,
    /// Concurrent declaring tasks (group commit batches their records).
    #[arg(long, default_value_t = 512)]
    pub tasks: usize,
    /// Fsync policy while declaring.
    #[arg(long, value_parser = parse_fsync, default_value = "never")]
    pub fsync: FsyncPolicy,
    /// Skip the restart measurement.
    #[arg(long)]
    pub no_reopen: bool,
    /// Seconds of paced appends to a stream while the idle queues exist (and
    /// once on an empty store, for comparison): shows what the queues cost
    /// live traffic, e.g. maintenance passes over every queue. 0: skip.
    #[arg(long, default_value_t = 3.0)]
    pub probe_seconds: f64,
    /// Log segment size, MiB (default: the store's, 128). With segments
    /// larger than all the declare records, no segment is reclaimed during
    /// the run, so no metadata snapshot is written.
    #[arg(long)]
    pub segment_mib: Option<u64>,
    /// Rate of the probe appends, msg/s.
    #[arg(long, default_value_t = 20_000.0)]
    pub probe_rate: f64,
}

/// Paced appends to a new stream on `store`: latency, and how long one
/// `metrics()` call (what /metrics does) takes with this many queues.
fn probe(rt: &Runtime, store: &Arc<polymq::Store>, a: &QueuesArgs, label: String) -> Result<(crate::hist::Hist, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let q = store.declare_queue("probe-stream", QueueOptions::stream()).await?.id;
        let _p = Progress::start(label, "msg", done.clone());
        let t = Instant::now();
        let _ = store.metrics();
        let metrics_ms = t.elapsed().as_secs_f64() * 1000.0;
        let p = crate::load::paced(
            crate::load::Target::Store(store.clone(), q),
            100,
            16,
            a.probe_rate,
            std::time::Duration::from_secs_f64(a.probe_seconds),
            std::time::Duration::from_micros(100),
            done,
        )
        .await?;
        anyhow::Ok((p.scheduled, metrics_ms))
    })
}

fn probe_row(n: u64, h: &crate::hist::Hist, metrics_ms: f64, rate: f64, pre: crate::report::Pre) -> Row {
    Row::new()
        .put("idle_queues", n)
        .num("rate_msg/s", rate, 0)
        .us("p50_us", h.quantile(0.5))
        .us("p99_us", h.quantile(0.99))
        .us("p99.9_us", h.quantile(0.999))
        .us("p99.99_us", h.quantile(0.9999))
        .us("max_us", h.max())
        .num("metrics()_ms", metrics_ms, 1)
        .pre(pre)
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(rt: &Runtime, rep: &Reporter, scratch: &Scratch, a: &QueuesArgs) -> Result<()> {
    rep.facts(
        "queues settings",
        &Row::new()
            .put("names", "q-00000000 .. (10 bytes), default options, idle")
            .put("tasks", a.tasks)
            .put("fsync", a.fsync.to_string())
            .put("memory", "VmRSS of this process before and after the declares; bytes/queue = delta / count")
            .put("restart", "a fresh process opens the same dir: replay time, VmRSS after open minus before, and peak (VmHWM)")
            .put("goal", "< 100 bytes per idle queue"),
    );
    let mut table = Table::new("queues: idle lightweight queues");
    let mut restart = Table::new("queues: restart (replay) cost");
    let mut probes = Table::new("queues: 100 B appends to one stream while the idle queues exist (fsync as above, 16 paced appenders; latency from each message's scheduled time)");
    if a.probe_seconds > 0.0 {
        let pre = before_run();
        let dir = scratch.fresh("queues-probe-empty")?;
        let store = open_store(&dir, a.fsync, None)?;
        let (h, ms) = probe(rt, &store, a, "probe, no idle queues".into())?;
        close_store(store)?;
        scratch.discard(&dir);
        rep.row(&mut probes, probe_row(0, &h, ms, a.probe_rate, pre));
    }
    for &n in &a.count {
        let pre = before_run();
        let dir = scratch.fresh(&format!("queues-{n}"))?;
        let store = open_store(&dir, a.fsync, a.segment_mib)?;
        let done = Arc::new(AtomicU64::new(0));
        let (rss0, rss1, elapsed, m) = rt.block_on(async {
            // Warm the runtime's threads and the store's first declare path so
            // their one-time allocations fall before the baseline.
            store.declare_queue("warm-up", QueueOptions::default()).await?;
            let rss0 = rss_bytes();
            let _p = Progress::start(format!("queues declare {n}"), "declares", done.clone());
            let next = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let mut tasks = JoinSet::new();
            for _ in 0..a.tasks {
                let (store, next, done) = (store.clone(), next.clone(), done.clone());
                tasks.spawn(async move {
                    let opts = QueueOptions::default();
                    let mut name = String::with_capacity(16);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        name.clear();
                        use std::fmt::Write;
                        let _ = write!(name, "q-{i:08}");
                        store.declare_queue(&name, opts.clone()).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.context("declare task panicked")??;
            }
            let elapsed = start.elapsed();
            let rss1 = rss_bytes();
            anyhow::Ok((rss0, rss1, elapsed, store.metrics()))
        })?;
        if m.queues != n + 1 {
            bail!("expected {} queues, the store has {}", n + 1, m.queues);
        }
        if a.probe_seconds > 0.0 {
            let pre = before_run();
            let (h, ms) = probe(rt, &store, a, format!("probe, {n} idle queues"))?;
            rep.row(&mut probes, probe_row(n, &h, ms, a.probe_rate, pre));
        }
        close_store(store)?;
        let delta = rss1.saturating_sub(rss0);
        rep.row(
            &mut table,
            Row::new()
                .put("queues", n)
                .num("seconds", elapsed.as_secs_f64(), 2)
                .num("declares/s", n as f64 / elapsed.as_secs_f64(), 0)
                .num("rss_before_MiB", rss0 as f64 / MIB, 1)
                .num("rss_after_MiB", rss1 as f64 / MIB, 1)
                .num("bytes/queue", delta as f64 / n as f64, 1)
                .put("<100B", if (delta as f64 / n as f64) < 100.0 { "yes" } else { "NO" })
                .num("log_MiB", m.log_bytes as f64 / MIB, 1)
                .num("log_bytes/queue", m.log_bytes as f64 / n as f64, 1)
                .pre(pre),
        );
        if !a.no_reopen {
            let pre = before_run();
            let r = reopen_in_child(&dir)?;
            let get = |k: &str| r.iter().find(|(kk, _)| kk == k).map(|(_, v)| *v).unwrap_or(0.0);
            rep.row(
                &mut restart,
                Row::new()
                    .put("queues", n)
                    .num("replay_s", get("replay_ms") / 1000.0, 2)
                    .num("records", get("records"), 0)
                    .num("rss_open_MiB", get("rss_after") / MIB, 1)
                    .num("bytes/queue", (get("rss_after") - get("rss_before")) / n as f64, 1)
                    .num("peak_rss_MiB", get("rss_peak") / MIB, 1)
                    .pre(pre),
            );
            // The warm-up queue, and the probe's stream if it ran.
            let expect = n + 1 + u64::from(a.probe_seconds > 0.0);
            if get("queues") as u64 != expect {
                bail!("after restart the store has {} queues, expected {expect}", get("queues"));
            }
        }
        scratch.discard(&dir);
    }
    rep.flush_table(&mut table);
    rep.flush_table(&mut restart);
    rep.flush_table(&mut probes);
    Ok(())
}

/// Runs `polymq-bench queues-reopen` on the dir and parses its `key=value` lines.
fn reopen_in_child(dir: &Path) -> Result<Vec<(String, f64)>> {
    let exe = std::env::current_exe().context("locating polymq-bench")?;
    let o = std::process::Command::new(exe).arg("queues-reopen").arg("--dir").arg(dir).output().context("running the reopen child")?;
    if !o.status.success() {
        bail!("reopen child failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// The child side: a fresh process, so the parent's heap does not hide or
/// inflate the cost of opening the store.
pub fn reopen_child(dir: &Path) -> Result<()> {
    let rss_before = rss_bytes();
    let start = Instant::now();
    let store = open_store(dir, FsyncPolicy::Never, None)?;
    let replay = start.elapsed();
    let rss_after = rss_bytes();
    let m = store.metrics();
    println!("replay_ms={}", replay.as_secs_f64() * 1000.0);
    println!("records={}", store.recovery().records);
    println!("queues={}", m.queues);
    println!("rss_before={rss_before}");
    println!("rss_after={rss_after}");
    println!("rss_peak={}", rss_peak_bytes());
    close_store(store)
}
