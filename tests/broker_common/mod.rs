//! The real `polymq` binary as a child process, for end-to-end tests of the
//! whole broker (`server_shell`, `malformed_input`).
//!
//! Ports: every listener binds 127.0.0.1:0 and the harness reads the bound
//! addresses from the broker's `listening protocol=<p> addr=<a>` log lines, so
//! there is no pick-a-free-port race.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Generous: CI runs these in parallel on two cores with a debug binary.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A SIGTERM'd broker must be gone within this (grace period is 5 s).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
pub const PROTOCOLS: [&str; 4] = ["mqtt", "amqp", "kafka", "http"];

/// A running broker process. Dropping it kills the process, so a failed
/// assertion never leaves a broker behind holding ports.
pub struct Broker {
    child: Child,
    stderr: Arc<Mutex<String>>,
    _data_dir: tempfile::TempDir,
}

impl Broker {
    /// `serve` with a fresh data dir and every listener on 127.0.0.1:0, then
    /// `extra` flags (clap takes the last occurrence, so they may override).
    pub fn serve(extra: &[&str]) -> Broker {
        let mut args = vec![
            "--mqtt-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Broker::serve_raw(&args, &[])
    }

    /// `serve --data-dir <tmp> --log info` plus exactly `args`, with `env`
    /// added to an environment scrubbed of the caller's POLYMQ_* and RUST_LOG.
    pub fn serve_raw(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_polymq"));
        cmd.arg("serve").arg("--data-dir").arg(data_dir.path()).args(["--log", "info"]).args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("POLYMQ_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG").envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn polymq");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        // Drained on a thread so a chatty broker never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stderr lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Broker { child, stderr, _data_dir: data_dir }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Bound addresses by protocol, once all four listeners have logged.
    pub fn wait_listening(&mut self) -> BTreeMap<String, SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let addrs = parse_listening(&self.stderr());
            if PROTOCOLS.iter().all(|p| addrs.contains_key(*p)) {
                return addrs;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("polymq exited early with {status}; stderr:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "listeners not logged in time; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listening and answering /healthz with 200.
    pub fn wait_healthy(&mut self) -> BTreeMap<String, SocketAddr> {
        let addrs = self.wait_listening();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match http(addrs["http"], "GET", "/healthz") {
                Ok(r) if r.status == 200 => return addrs,
                Ok(_) | Err(_) => {}
            }
            assert!(Instant::now() < deadline, "/healthz never answered 200; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send_sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn parse_listening(log: &str) -> BTreeMap<String, SocketAddr> {
    log.lines()
        .filter_map(|line| {
            let rest = line.split_once("listening protocol=")?.1;
            let (protocol, rest) = rest.split_once(" addr=")?;
            let addr = rest.split_whitespace().next()?.parse().ok()?;
            Some((protocol.to_owned(), addr))
        })
        .collect()
}

pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub fn http(addr: SocketAddr, method: &str, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: server_shell\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of head")?;
    let status = head.get(9..12).context("short status line")?.parse().context("status code")?;
    let length: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).context("no Content-Length")?.parse()?;
    if length != body.len() {
        bail!("Content-Length {length} but body has {} bytes", body.len());
    }
    Ok(HttpResponse { status, head: head.to_owned(), body: body.to_owned() })
}

/// The value of one exact series (`name{labels}`) in a metrics body.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn metrics(addr: SocketAddr) -> String {
    let r = http(addr, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200);
    r.body
}

/// What a client sees on a socket within `wait`.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Closed,
    Open,
    Data,
}

pub fn observe(stream: &mut TcpStream, wait: Duration) -> Seen {
    stream.set_read_timeout(Some(wait)).expect("set timeout");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => Seen::Closed,
        Ok(_) => Seen::Data,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Seen::Open,
        Err(_) => Seen::Closed,
    }
}

pub fn wait_for_metric(http_addr: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = metrics(http_addr);
        if sample(&text, series) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {want}; last /metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Broker {
    /// The broker's resident set size in bytes (Linux /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
