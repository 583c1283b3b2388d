//! One Kafka connection: size-prefixed frames in, one request at a time, the
//! responses in request order (Kafka's per-connection ordering guarantee).
//!
//! The frame size is checked against `max_request_bytes` before a byte of
//! the body is buffered; the request header is decoded by the bounded reader;
//! an API or version we do not serve closes the connection, except
//! ApiVersions, which is answered in v0 with UNSUPPORTED_VERSION (KIP-511).
//!
//! Time limits: a connection that sends nothing for `connections_max_idle`
//! is closed (Kafka's `connections.max.idle.ms`); once the first byte of a
//! request is in, the whole frame must arrive within `request_read_timeout`,
//! so a client trickling bytes cannot hold a connection slot and a frame
//! buffer for long. The buffer grows with the bytes that arrive (up to a
//! first 1 MiB at once), not with the size the client announced.
//!
//! With SASL on, only ApiVersions, SaslHandshake and SaslAuthenticate are
//! served before authentication; anything else closes the connection (as
//! Kafka). After a v0 SaslHandshake the next frames are bare SASL tokens.
//!
//! Under the core's memory alarm a Produce is answered with
//! `throttle_time_ms` (Kafka's quota semantics) and the connection reads
//! nothing for that long: from Produce v6 (KIP-219) the answer goes out at
//! once and the client backs off too; before v6 the answer itself is held.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use polymq::server::ShutdownSignal;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::api::{self, HandlerError, Reply, Request};
use crate::rope::write_all_chunks;
use crate::sasl::{self, AuthState, Step};
use crate::wire::{Reader, WireError};
use crate::Shared;

/// What a handler may use and keep across the requests of one connection.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// `host:port` this connection's Metadata / FindCoordinator advertise.
    pub advertised: String,
    /// SASL: where this connection is in authentication.
    pub auth: AuthState,
    /// Set by a handler whose response must be the last one (failed SASL):
    /// the reason, for the log.
    pub close_after_reply: Option<String>,
    /// The `throttle_time_ms` a Produce answers with (memory alarm), set by
    /// the connection before dispatch.
    pub produce_throttle_ms: i32,
    /// Read nothing more for this long after the response went out.
    mute_after_reply: Option<Duration>,
}

/// How long a Produce is throttled while the memory alarm is on. The client
/// comes back after it and is throttled again while the alarm lasts.
pub(crate) const PRODUCE_THROTTLE: Duration = Duration::from_millis(1000);
/// A refused authentication is answered (or closed) after this, as Kafka's
/// `connection.failed.authentication.delay.ms`: a client that retries at
/// once (librdkafka reconnects within 50 ms) does not spin the broker.
const FAILED_AUTHENTICATION_DELAY: Duration = Duration::from_millis(100);
/// The first allocation for a request body; larger bodies grow as they arrive.
const BODY_PREALLOC_MAX: usize = 1024 * 1024;

/// Why a connection ended, for the debug log.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed the connection")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("request of {0} bytes is over the limit of {1}")]
    TooLarge(i64, usize),
    #[error("malformed request header: {0}")]
    Header(WireError),
    #[error("api key {0} is not served")]
    UnknownApi(i16),
    #[error("{0:?} v{1} is not served")]
    UnsupportedVersion(ApiKey, i16),
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error("{0:?} before SASL authentication")]
    Unauthenticated(ApiKey),
    #[error("SASL: {0}")]
    Sasl(String),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("a request took longer than {0:?} to arrive")]
    SlowRequest(Duration),
    #[error("shutting down")]
    Shutdown,
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) {
    let _ = stream.set_nodelay(true);
    let advertised = match (&shared.config.advertised, stream.local_addr()) {
        (Some(configured), _) => configured.clone(),
        (None, Ok(local)) => local.to_string(),
        (None, Err(_)) => return,
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    let auth = AuthState::initial(shared.config.sasl);
    let mut session = Session { shared, peer, advertised, auth, close_after_reply: None, produce_throttle_ms: 0, mute_after_reply: None };
    let mut out = BytesMut::new();
    let result: Result<(), Closed> = async {
        loop {
            let (idle, deadline) = (session.shared.config.connections_max_idle, session.shared.config.request_read_timeout);
            let first = tokio::select! {
                biased;
                _ = shutdown.triggered() => return Err(Closed::Shutdown),
                first = tokio::time::timeout(idle, rd.read_u8()) => match first {
                    Err(_) => return Err(Closed::Idle(idle)),
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Closed::Eof),
                    Ok(Err(e)) => return Err(e.into()),
                },
            };
            let max = session.shared.config.max_request_bytes;
            let frame = tokio::select! {
                biased;
                _ = shutdown.triggered() => return Err(Closed::Shutdown),
                frame = tokio::time::timeout(deadline, read_frame(&mut rd, first, max)) => match frame {
                    Err(_) => return Err(Closed::SlowRequest(deadline)),
                    Ok(frame) => frame?,
                },
            };
            let response = if session.auth.expects_raw_token() {
                let token = raw_sasl_token(&mut session, &frame)?;
                Some(Response { header: None, body: vec![token] }).filter(|_| session.close_after_reply.is_none())
            } else {
                handle(&mut session, frame).await?
            };
            if session.close_after_reply.is_some() {
                tokio::time::sleep(FAILED_AUTHENTICATION_DELAY).await;
            }
            if let Some(mut response) = response {
                // Size, response header, then the body's chunks as they are:
                // one vectored write, no copy of the body (a Fetch's batches).
                let body_len: usize = response.body.iter().map(Bytes::len).sum();
                out.clear();
                match response.header {
                    None => out.put_i32(body_len as i32),
                    Some((correlation_id, tagged)) => {
                        out.put_i32((body_len + 4 + usize::from(tagged)) as i32);
                        out.put_i32(correlation_id);
                        if tagged {
                            out.put_u8(0); // no tagged fields
                        }
                    }
                }
                response.body.insert(0, out.split().freeze());
                write_all_chunks(&mut wr, &mut response.body).await?;
            }
            if let Some(reason) = session.close_after_reply.take() {
                return Err(Closed::Sasl(reason));
            }
            if let Some(mute) = session.mute_after_reply.take() {
                tokio::select! {
                    biased;
                    _ = shutdown.triggered() => return Err(Closed::Shutdown),
                    _ = tokio::time::sleep(mute) => {}
                }
            }
        }
    }
    .await;
    match result {
        Err(Closed::Eof) | Err(Closed::Shutdown) | Ok(()) => {}
        Err(e @ (Closed::Sasl(_) | Closed::Unauthenticated(_))) => info!(peer = %peer, reason = %e, "closing Kafka connection"),
        Err(e) => debug!(peer = %peer, reason = %e, "closing Kafka connection"),
    }
    let _ = wr.shutdown().await;
}

/// Reads the rest of a frame whose first byte is `first`: the size (checked
/// before anything is buffered), then the body, into a buffer that grows
/// with what arrives.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, first: u8, max: usize) -> Result<Bytes, Closed> {
    let mut rest = [0u8; 3];
    rd.read_exact(&mut rest).await.map_err(eof)?;
    let size = i32::from_be_bytes([first, rest[0], rest[1], rest[2]]);
    if size < 0 || size as usize > max {
        return Err(Closed::TooLarge(i64::from(size), max));
    }
    let size = size as usize;
    let mut body = Vec::with_capacity(size.min(BODY_PREALLOC_MAX));
    rd.take(size as u64).read_to_end(&mut body).await?;
    if body.len() < size {
        return Err(Closed::Eof);
    }
    Ok(Bytes::from(body))
}

fn eof(e: std::io::Error) -> Closed {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Closed::Eof
    } else {
        Closed::Io(e)
    }
}

/// A bare SASL token after a v0 SaslHandshake: the answer is a bare token
/// too (PLAIN: an empty frame); a refusal sets `close_after_reply` and the
/// connection closes without an answer, as Kafka.
fn raw_sasl_token(session: &mut Session, frame: &[u8]) -> Result<Bytes, Closed> {
    if frame.len() > sasl::TOKEN_BYTES_MAX {
        return Err(Closed::Sasl(format!("a SASL token of {} bytes", frame.len())));
    }
    match sasl::step(&mut session.auth, &session.shared.users, frame) {
        Step::Continue(token) => Ok(Bytes::from(token)),
        Step::Done { user, token } => {
            info!(peer = %session.peer, user = %user, "Kafka client authenticated");
            Ok(Bytes::from(token))
        }
        Step::Failed(reason) => {
            session.close_after_reply = Some(reason);
            // Closed without an answer (as Kafka), after the delay.
            Ok(Bytes::new())
        }
    }
}

/// A response to write: its header (correlation id, and whether the header
/// version has a tagged-fields byte; `None` for a bare SASL token) and the
/// body's chunks.
struct Response {
    header: Option<(i32, bool)>,
    body: Vec<Bytes>,
}

/// Decodes the request header, dispatches, and returns the response (header
/// fields + body, without the size prefix). `None`: no response (acks=0).
async fn handle(session: &mut Session, frame: Bytes) -> Result<Option<Response>, Closed> {
    let mut rd = Reader::new(frame);
    let api_key = rd.i16().map_err(Closed::Header)?;
    let version = rd.i16().map_err(Closed::Header)?;
    let correlation_id = rd.i32().map_err(Closed::Header)?;
    let Some(api) = api::lookup(api_key) else { return Err(Closed::UnknownApi(api_key)) };
    let key = api.key;
    let in_range = (api.min_version..=api.max_version).contains(&version);
    if !in_range && key != ApiKey::ApiVersions {
        return Err(Closed::UnsupportedVersion(key, version));
    }
    // The header's own shape (v1: client id; v2: + tagged fields) follows
    // the API version; an unserved ApiVersions version is read as v0..2 are.
    let header_version = if in_range { key.request_header_version(version) } else { 1 };
    let client_id = rd.nullable_string(false).map_err(Closed::Header)?;
    rd.tagged_fields(header_version >= 2).map_err(Closed::Header)?;
    if !session.auth.is_authenticated() && !matches!(key, ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
        return Err(Closed::Unauthenticated(key));
    }
    // Memory alarm: Kafka's quota throttling. v6+ (KIP-219): answer at once
    // and read nothing for the throttle time; before v6: hold the answer.
    let throttle = key == ApiKey::Produce && session.shared.store.memory_alarm().is_on();
    session.produce_throttle_ms = if throttle { PRODUCE_THROTTLE.as_millis() as i32 } else { 0 };

    let reply = if in_range {
        let flexible = key.request_header_version(version) >= 2;
        let req = Request { api_key: key, version, correlation_id, client_id, flexible, body: rd };
        (api.handler)(session, req).await?
    } else {
        api::api_versions::unsupported_version_response()?
    };
    if throttle {
        if version >= 6 {
            session.mute_after_reply = Some(PRODUCE_THROTTLE);
        } else {
            tokio::time::sleep(PRODUCE_THROTTLE).await;
        }
    }
    let body = match reply {
        Reply::None => return Ok(None),
        Reply::Body(body) => vec![body],
        Reply::Chunks(chunks) => chunks,
    };
    // ApiVersions responses always use header v0 (KIP-511).
    let response_header_version = if in_range { key.response_header_version(version) } else { 0 };
    Ok(Some(Response { header: Some((correlation_id, response_header_version >= 1)), body }))
}
