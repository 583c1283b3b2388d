//! The baseline: what the data dir's filesystem does without polymq.
//!
//! Three measurements: a sequential write with O_DIRECT (the device's
//! bandwidth, page cache bypassed), the same through the page cache with one
//! fdatasync at the end (how the log writes: `dd conv=fdatasync`), and small
//! appends each followed by fdatasync (the floor under `fsync=always`
//! latency). `dd` runs too when present, so the number can be checked
//! against a tool everyone trusts.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::hist::Hist;
use crate::report::{before_run, Reporter, Row, Table};
use crate::Scratch;

/// Linux's O_DIRECT (asm-generic value, as on x86-64 and aarch64). The
/// workspace forbids unsafe and the bench does not need all of libc for one
/// constant.
const O_DIRECT: i32 = 0o40000;
/// Buffer and offset alignment that O_DIRECT wants (the logical block size
/// of any common device divides it).
const ALIGN: usize = 4096;

#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    /// MiB to write in each sequential test.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Block size of each write, KiB.
    #[arg(long, default_value_t = 1024)]
    pub block_kib: usize,
    /// Seconds of 4 KiB append + fdatasync (fsync latency floor).
    #[arg(long, default_value_t = 3.0)]
    pub sync_seconds: f64,
    /// Do not run `dd` for the cross-check.
    #[arg(long)]
    pub no_dd: bool,
    /// Repeat the sequential tests this many times (a virtual disk varies from run to run).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

/// MB/s with MB = 10^6 bytes, as dd reports it.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The medians of one `disk` run, MB/s (the baselines other scenarios are read against).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskResult {
    /// O_DIRECT + final fdatasync: the device ("the disk").
    pub direct: Option<f64>,
    /// Buffered + final fdatasync: the path the log writes through.
    pub buffered: Option<f64>,
}

pub fn run(rep: &Reporter, scratch: &Scratch, a: &DiskArgs) -> Result<DiskResult> {
    let dir = scratch.fresh("disk")?;
    let block = a.block_kib * 1024;
    anyhow::ensure!(block % ALIGN == 0 && block > 0, "--block-kib must be a multiple of 4");
    let bytes = a.mib * 1024 * 1024;
    let blocks = bytes.div_ceil(block as u64);
    let mut table = Table::new("disk: sequential write of the data dir's filesystem");
    rep.facts("disk settings", &Row::new().put("bytes", bytes).put("block_bytes", block).put("file", dir.display().to_string()));

    // The buffer: over-allocate, then slice at the first aligned address.
    let mut raw = vec![0xA5u8; block + ALIGN];
    let skew = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
    let buf = &mut raw[skew..skew + block];
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 31 % 251) as u8);

    // MB/s per method across repetitions, for the medians.
    let mut seen: Vec<(String, Vec<f64>)> = Vec::new();
    let mut note = |method: &str, v: f64| match seen.iter_mut().find(|(m, _)| m == method) {
        Some((_, xs)) => xs.push(v),
        None => seen.push((method.to_owned(), vec![v])),
    };
    for r in 1..=a.repeat.max(1) {
        let pre = before_run();
        let f1 = dir.join("direct.dat");
        let direct = sequential(&f1, buf, blocks, true);
        let _ = std::fs::remove_file(&f1);
        match direct {
            Ok(d) => {
                note("O_DIRECT + final fdatasync", mbps(blocks * block as u64, d));
                rep.row(
                    &mut table,
                    Row::new()
                        .put("run", r)
                        .put("method", "O_DIRECT + final fdatasync")
                        .put("bytes", blocks * block as u64)
                        .num("seconds", d.as_secs_f64(), 2)
                        .num("MB/s", mbps(blocks * block as u64, d), 0)
                        .pre(pre),
                )
            }
            Err(e) => rep.row(&mut table, Row::new().put("run", r).put("method", format!("O_DIRECT unavailable: {e:#}"))),
        }

        let pre2 = before_run();
        let f2 = dir.join("buffered.dat");
        let d = sequential(&f2, buf, blocks, false)?;
        let _ = std::fs::remove_file(&f2);
        note("buffered + final fdatasync", mbps(blocks * block as u64, d));
        rep.row(
            &mut table,
            Row::new()
                .put("run", r)
                .put("method", "buffered + final fdatasync")
                .put("bytes", blocks * block as u64)
                .num("seconds", d.as_secs_f64(), 2)
                .num("MB/s", mbps(blocks * block as u64, d), 0)
                .pre(pre2),
        );

        if !a.no_dd {
            for (label, flag) in [("dd oflag=direct", "oflag=direct"), ("dd conv=fdatasync", "conv=fdatasync")] {
                let f = dir.join("dd.dat");
                let pre = before_run();
                let cmd = format!("dd if=/dev/zero of={} bs={}K count={} {flag}", f.display(), a.block_kib, blocks);
                match dd(&f, a.block_kib, blocks, flag) {
                    Ok(Some((b, secs))) => {
                        note(label, b as f64 / 1e6 / secs);
                        rep.row(
                            &mut table,
                            Row::new()
                                .put("run", r)
                                .put("method", label)
                                .put("bytes", b)
                                .num("seconds", secs, 2)
                                .num("MB/s", b as f64 / 1e6 / secs, 0)
                                .pre(pre),
                        )
                    }
                    Ok(None) => rep.row(&mut table, Row::new().put("run", r).put("method", format!("{label}: dd not found or failed"))),
                    Err(e) => rep.row(&mut table, Row::new().put("run", r).put("method", format!("{label}: {e:#}"))),
                }
                let _ = std::fs::remove_file(&f);
                if r == 1 {
                    rep.note(&format!("cross-check: {cmd}"));
                }
            }
        } else if r == 1 {
            rep.note(&format!(
                "cross-check: dd if=/dev/zero of={}/dd.dat bs={}K count={} oflag=direct   (and conv=fdatasync)",
                dir.display(),
                a.block_kib,
                blocks
            ));
        }
    }
    rep.flush_table(&mut table);
    let median = |method: &str| {
        seen.iter().find(|(m, _)| m == method).map(|(_, xs)| {
            let mut xs = xs.clone();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        })
    };
    let result = DiskResult { direct: median("O_DIRECT + final fdatasync"), buffered: median("buffered + final fdatasync") };
    if a.repeat > 1 {
        let mut med = Table::new("disk: median of the repetitions");
        for (m, mut xs) in seen {
            xs.sort_by(f64::total_cmp);
            let (lo, hi) = (xs[0], xs[xs.len() - 1]);
            rep.row(
                &mut med,
                Row::new().put("method", m).num("median_MB/s", xs[xs.len() / 2], 0).num("min_MB/s", lo, 0).num("max_MB/s", hi, 0),
            );
        }
        rep.flush_table(&mut med);
    }

    // fdatasync latency: what one `fsync=always` batch costs at the least.
    if a.sync_seconds > 0.0 {
        let mut t2 = Table::new("disk: 4 KiB append + fdatasync (the floor under fsync=always)");
        let pre = before_run();
        let f3 = dir.join("sync.dat");
        let (h, elapsed) = sync_loop(&f3, Duration::from_secs_f64(a.sync_seconds))?;
        let _ = std::fs::remove_file(&f3);
        rep.row(
            &mut t2,
            Row::new()
                .put("ops", h.count())
                .num("ops/s", h.count() as f64 / elapsed.as_secs_f64(), 0)
                .us("p50_us", h.quantile(0.5))
                .us("p99_us", h.quantile(0.99))
                .us("p99.9_us", h.quantile(0.999))
                .us("max_us", h.max())
                .pre(pre),
        );
        rep.flush_table(&mut t2);
    }
    scratch.discard(&dir);
    Ok(result)
}

/// Writes `blocks` copies of `buf` to a new file and fdatasyncs it; the time includes the sync.
fn sequential(path: &Path, buf: &[u8], blocks: u64, direct: bool) -> Result<Duration> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        o.custom_flags(O_DIRECT);
    }
    let mut f = o.open(path).with_context(|| format!("open {}", path.display()))?;
    let start = Instant::now();
    for _ in 0..blocks {
        f.write_all(buf).context("write")?;
    }
    f.sync_data().context("fdatasync")?;
    Ok(start.elapsed())
}

fn sync_loop(path: &Path, for_: Duration) -> Result<(Hist, Duration)> {
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).open(path).with_context(|| format!("open {}", path.display()))?;
    let block = vec![0x3Cu8; 4096];
    let mut h = Hist::default();
    let start = Instant::now();
    while start.elapsed() < for_ {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64);
    }
    Ok((h, start.elapsed()))
}

/// Runs dd and returns (bytes, seconds) parsed from its summary line.
fn dd(out: &Path, block_kib: usize, blocks: u64, flag: &str) -> Result<Option<(u64, f64)>> {
    let r = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg(format!("bs={block_kib}K"))
        .arg(format!("count={blocks}"))
        .arg(flag)
        .output();
    let Ok(o) = r else { return Ok(None) };
    if !o.status.success() {
        return Ok(None);
    }
    // "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.03 s, 529 MB/s"
    let text = String::from_utf8_lossy(&o.stderr);
    let line = text.lines().rev().find(|l| l.contains(" copied, ")).context("dd printed no summary")?;
    let bytes: u64 = line.split_whitespace().next().and_then(|s| s.parse().ok()).context("dd byte count")?;
    let after = line.split(" copied, ").nth(1).context("dd summary")?;
    let secs: f64 = after.split_whitespace().next().and_then(|s| s.replace(',', ".").parse().ok()).context("dd seconds")?;
    Ok(Some((bytes, secs)))
}
