//! In-process tests of the shell with a stand-in protocol. The end-to-end
//! tests against the real binary are in tests/server_shell.rs.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::StoreConfig;

/// Holds a connection open until the peer closes it or shutdown fires; on
/// shutdown it writes a goodbye first, as a real protocol session would.
/// With `ignore_shutdown` it never leaves on its own, to exercise the grace.
struct HoldService {
    ignore_shutdown: bool,
}

impl ProtocolService for HoldService {
    fn name(&self) -> &'static str {
        "hold"
    }

    fn serve_connection(self: Arc<Self>, mut stream: TcpStream, _peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture {
        Box::pin(async move {
            let mut buf = [0u8; 64];
            if self.ignore_shutdown {
                let _ = tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            tokio::select! {
                _ = shutdown.triggered() => { let _ = stream.write_all(b"bye\n").await; }
                _ = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
            }
        })
    }
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn test_config(connection_max: usize) -> Config {
    Config { http_listen: local(), connection_max, ..Config::default() }
}

async fn start(
    connection_max: usize,
    ignore_shutdown: bool,
    grace: Duration,
) -> (SocketAddr, SocketAddr, ShutdownTrigger, tokio::task::JoinHandle<Result<(), ServerError>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path())).expect("open store");
    let service: Arc<dyn ProtocolService> = Arc::new(HoldService { ignore_shutdown });
    let server =
        Server::bind(&test_config(connection_max), store, vec![(local(), service)]).await.expect("bind").with_shutdown_grace(grace);
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0].0, "hold");
    assert_eq!(addrs[1], (HTTP_PROTOCOL, server.http_addr()));
    assert_ne!(addrs[0].1.port(), 0, "port 0 must resolve to the bound port");
    let (trigger, signal) = shutdown_channel();
    let run = tokio::spawn(server.run(signal.triggered()));
    wait_healthy(addrs[1].1).await;
    (addrs[0].1, addrs[1].1, trigger, run, dir)
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await.expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read response");
    let status = text.get(9..12).and_then(|s| s.parse().ok()).expect("status code");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn wait_healthy(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(http, "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "healthz never became 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metric(http: SocketAddr, series: &str) -> Option<u64> {
    let (_, body) = http_get(http, "/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Reads until EOF or error; None if the connection stays open for `wait`.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 64];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test]
async fn a_taken_port_fails_bind_with_the_address() {
    let taken = std::net::TcpListener::bind(local()).expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path())).expect("open store");
    let service: Arc<dyn ProtocolService> = Arc::new(HoldService { ignore_shutdown: false });
    let err = Server::bind(&test_config(10), store, vec![(taken_addr, service)]).await.err().expect("bind must fail");
    let text = err.to_string();
    assert!(text.contains(&taken_addr.to_string()) && text.contains("hold"), "{text}");
}

#[tokio::test]
async fn zero_connection_max_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path())).expect("open store");
    assert!(matches!(Server::bind(&test_config(0), store, vec![]).await, Err(ServerError::Config(_))));
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let (addr, http, trigger, run, _dir) = start(2, false, Duration::from_secs(5)).await;
    let mut first = TcpStream::connect(addr).await.expect("connect 1");
    let mut second = TcpStream::connect(addr).await.expect("connect 2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(http, "polymq_connections{protocol=\"hold\"}").await != Some(2) {
        assert!(Instant::now() < deadline, "two connections never counted as open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut third = TcpStream::connect(addr).await.expect("connect 3");
    assert!(read_until_closed(&mut third, Duration::from_secs(2)).await.is_some(), "third must be closed");
    assert!(read_until_closed(&mut first, Duration::from_millis(100)).await.is_none(), "first must stay open");
    assert!(read_until_closed(&mut second, Duration::from_millis(100)).await.is_none(), "second must stay open");
    assert_eq!(metric(http, "polymq_connections_rejected_total{protocol=\"hold\"}").await, Some(1));
    assert_eq!(metric(http, "polymq_connections_accepted_total{protocol=\"hold\"}").await, Some(2));

    // Closing one frees its slot for the next client.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(http, "polymq_connections{protocol=\"hold\"}").await != Some(1) {
        assert!(Instant::now() < deadline, "closed connection never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fourth = TcpStream::connect(addr).await.expect("connect 4");
    assert!(read_until_closed(&mut fourth, Duration::from_millis(200)).await.is_none(), "fourth must be served");

    trigger.trigger();
    run.await.expect("join").expect("run");
}

#[tokio::test]
async fn shutdown_signals_sessions_then_stops_accepting() {
    let (addr, _http, trigger, run, _dir) = start(10, false, Duration::from_secs(5)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    // Let the accept loop hand it to the service before draining.
    tokio::time::sleep(Duration::from_millis(50)).await;
    trigger.trigger();
    let got = read_until_closed(&mut client, Duration::from_secs(2)).await.expect("closed on shutdown");
    assert_eq!(got, b"bye\n", "the session's goodbye arrives before the close");
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("run ends").expect("join").expect("run ok");
    assert!(TcpStream::connect(addr).await.is_err(), "listener must be closed after shutdown");
}

#[tokio::test]
async fn shutdown_waits_at_most_the_grace_period() {
    let grace = Duration::from_millis(300);
    let (addr, _http, trigger, run, _dir) = start(10, true, grace).await;
    let _client = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("run ends").expect("join").expect("run ok");
    let took = started.elapsed();
    assert!(took >= grace, "returned before the grace period: {took:?}");
    assert!(took < grace + Duration::from_secs(2), "grace period not bounded: {took:?}");
}
