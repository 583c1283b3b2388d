//! A deliberately tiny HTTP/1.1 server for health and metrics: one request
//! per connection, GET only, no bodies read. Hand-rolled so the core does not
//! pull in an HTTP stack for two endpoints; every read is bounded in size and
//! time because this port is as exposed as the protocol ports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::metrics::{render, ProtocolCounters};
use super::ShutdownSignal;
use crate::Store;

/// Largest request head (request line + headers) we buffer. Monitoring
/// clients send a few hundred bytes; 8 KiB matches common server defaults.
pub(crate) const HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client that has not finished its request head by then is cut off, so a
/// slow client cannot pin a task and a socket forever.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the response, unread input is drained briefly so closing does not
/// turn into a reset that discards the response on the client side.
const LINGER_TIMEOUT: Duration = Duration::from_millis(500);
const LINGER_BYTES_MAX: usize = 64 * 1024;
/// Concurrent HTTP connections. Scrapers and probes need a handful; the cap
/// keeps a flood on this port from eating into the protocol connections' fds.
const HTTP_CONNECTION_COUNT_MAX: usize = 64;

pub(crate) struct HttpState {
    pub store: Arc<Store>,
    pub protocols: Vec<Arc<ProtocolCounters>>,
    pub ready: Arc<AtomicBool>,
    pub connection_max: usize,
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: ShutdownSignal) {
    let permits = Arc::new(Semaphore::new(HTTP_CONNECTION_COUNT_MAX));
    let stopped = stop.triggered();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    debug!(%peer, "http connection limit reached; closing");
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    handle_connection(stream, &state).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually fd exhaustion; spinning would only make it worse.
                warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle_connection(mut stream: TcpStream, state: &HttpState) {
    let response = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_elapsed) => Response::text(408, "request timeout\n"),
        Ok(Err(HeadError::Io)) => return,
        Ok(Err(HeadError::TooLarge)) => Response::text(431, "request head too large\n"),
        Ok(Err(HeadError::Malformed)) => Response::text(400, "bad request\n"),
        Ok(Ok(request)) => route(&request, state),
    };
    let bytes = response.encode();
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER_TIMEOUT, linger(&mut stream)).await;
}

async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES_MAX {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    Io,
    TooLarge,
    Malformed,
}

async fn read_head<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Result<Request, HeadError> {
    let mut buf = vec![0u8; HEAD_BYTES_MAX];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = reader.read(&mut buf[filled..]).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        // Only the new bytes (plus 3 of overlap) can complete the terminator.
        let search_from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = find_head_end(&buf[search_from..filled]) {
            return parse_head(&buf[..search_from + end]);
        }
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

pub(crate) fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(HeadError::Malformed);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Request { method: method.to_owned(), path: path.to_owned() })
}

pub(crate) fn route(request: &Request, state: &HttpState) -> Response {
    if request.method != "GET" {
        return Response { allow_get: true, ..Response::text(405, "method not allowed\n") };
    }
    match request.path.as_str() {
        "/healthz" if state.ready.load(Ordering::Acquire) => Response::text(200, "ok\n"),
        "/healthz" => Response::text(503, "not ready\n"),
        "/metrics" => {
            let body = render(&state.store.metrics(), &state.protocols, state.connection_max);
            Response { content_type: "text/plain; version=0.0.4; charset=utf-8", ..Response::text(200, body) }
        }
        _ => Response::text(404, "not found\n"),
    }
}

#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    allow_get: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into(), allow_get: false }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let allow = if self.allow_get { "Allow: GET\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    fn state(dir: &std::path::Path, ready: bool) -> HttpState {
        HttpState {
            store: Store::open(StoreConfig::new(dir)).expect("open store"),
            protocols: vec![Arc::new(ProtocolCounters::new("mqtt"))],
            ready: Arc::new(AtomicBool::new(ready)),
            connection_max: 5,
        }
    }

    fn get(path: &str) -> Request {
        Request { method: "GET".into(), path: path.into() }
    }

    #[test]
    fn healthz_is_503_until_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(dir.path(), false);
        assert_eq!(route(&get("/healthz"), &s).status, 503);
        s.ready.store(true, Ordering::Release);
        let r = route(&get("/healthz"), &s);
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    }

    #[test]
    fn routes_metrics_404_and_405() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(dir.path(), true);
        let r = route(&get("/metrics"), &s);
        assert_eq!(r.status, 200);
        assert!(r.content_type.contains("version=0.0.4"));
        assert!(r.body.contains("polymq_connections{protocol=\"mqtt\"} 0"));
        assert_eq!(route(&get("/nope"), &s).status, 404);
        let post = Request { method: "POST".into(), path: "/metrics".into() };
        let r = route(&post, &s);
        assert_eq!(r.status, 405);
        assert!(String::from_utf8_lossy(&r.encode()).contains("Allow: GET\r\n"));
    }

    #[test]
    fn parses_request_lines() {
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a"), Ok(get("/metrics")));
        assert_eq!(parse_head(b"GET /healthz HTTP/1.0"), Ok(get("/healthz")));
        for bad in
            [&b"GET /healthz"[..], b"get /x HTTP/1.1", b"GET x HTTP/1.1", b"GET /x SPDY/3", b"GET /x HTTP/1.1 extra", b"\xff /x HTTP/1.1"]
        {
            assert_eq!(parse_head(bad), Err(HeadError::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn head_reads_are_bounded() {
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(HEAD_BYTES_MAX));
        assert_eq!(read_head(&mut huge.as_bytes()).await, Err(HeadError::TooLarge));
        assert_eq!(read_head(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n"[..]).await, Err(HeadError::Io));
        // The terminator split across reads is still found.
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_head(&mut server).await });
        client.write_all(b"GET /healthz HTTP/1.1\r\n\r").await.expect("write");
        tokio::task::yield_now().await;
        client.write_all(b"\n").await.expect("write");
        assert_eq!(reader.await.expect("join"), Ok(get("/healthz")));
    }
}
