//! The other baseline: what the loopback link carries. One plain TCP
//! connection through 127.0.0.1, large writes on one thread and large reads
//! on another, no protocol and no copy beyond the kernel's: the ceiling for
//! a consumer fetching from a broker on the same machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::disk::mbps;
use crate::report::{before_run, Reporter, Row, Table};

#[derive(Args, Debug, Clone)]
pub struct LoopbackArgs {
    /// Seconds of copying per run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Size of each write and read, KiB.
    #[arg(long, default_value_t = 1024)]
    pub block_kib: usize,
    /// Runs; the table ends with their median.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
}

/// One copy: bytes received and the time from the first write to the reader's EOF.
fn copy_once(block: usize, dur: Duration) -> Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::Builder::new().name("bench-loop-read".into()).spawn(move || -> Result<u64> {
        let (mut s, _) = listener.accept().context("accept")?;
        let mut buf = vec![0u8; block];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("read"),
            }
        }
    })?;
    let mut s = TcpStream::connect(addr).context("connect")?;
    let buf = vec![0xA5u8; block];
    let start = Instant::now();
    while start.elapsed() < dur {
        s.write_all(&buf).context("write")?;
    }
    s.shutdown(std::net::Shutdown::Write).context("shutdown")?;
    let total = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok((total, start.elapsed()))
}

/// Runs the copy `repeat` times and returns the median MB/s.
pub fn run(rep: &Reporter, a: &LoopbackArgs) -> Result<f64> {
    let block = a.block_kib.max(1) * 1024;
    let mut table = Table::new("loopback: one TCP connection through 127.0.0.1");
    let mut seen = Vec::new();
    for r in 1..=a.repeat.max(1) {
        let pre = before_run();
        let (bytes, d) = copy_once(block, Duration::from_secs_f64(a.seconds))?;
        let v = mbps(bytes, d);
        seen.push(v);
        rep.row(
            &mut table,
            Row::new()
                .put("run", r)
                .put("block_bytes", block)
                .put("bytes", bytes)
                .num("seconds", d.as_secs_f64(), 2)
                .num("MB/s", v, 0)
                .pre(pre),
        );
    }
    seen.sort_by(f64::total_cmp);
    let median = seen[seen.len() / 2];
    if seen.len() > 1 {
        rep.row(&mut table, Row::new().put("run", "median").put("block_bytes", block).num("MB/s", median, 0));
    }
    rep.flush_table(&mut table);
    Ok(median)
}
