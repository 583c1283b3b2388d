//! One Kafka connection: size-prefixed frames in, one request at a time, the
//! responses in request order (Kafka's per-connection ordering guarantee).
//!
//! The frame size is checked against `max_request_bytes` before a byte of
//! the body is buffered; the request header is decoded by the bounded reader;
//! an API or version we do not serve closes the connection, except
//! ApiVersions, which is answered in v0 with UNSUPPORTED_VERSION (KIP-511).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use polymq::server::ShutdownSignal;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::debug;

use crate::api::{self, HandlerError, Reply, Request};
use crate::wire::{Reader, WireError};
use crate::Shared;

/// What a handler may use and keep across the requests of one connection.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    #[allow(dead_code)] // for logs of the handlers to come (SASL, groups)
    pub peer: SocketAddr,
    /// `host:port` this connection's Metadata / FindCoordinator advertise.
    pub advertised: String,
}

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
    let mut session = Session { shared, peer, advertised };
    let mut out = BytesMut::new();
    let result: Result<(), Closed> = async {
        loop {
            let size = tokio::select! {
                biased;
                _ = shutdown.triggered() => return Err(Closed::Shutdown),
                size = rd.read_i32() => match size {
                    Ok(size) => size,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Closed::Eof),
                    Err(e) => return Err(e.into()),
                },
            };
            let max = session.shared.config.max_request_bytes;
            if size < 0 || size as usize > max {
                return Err(Closed::TooLarge(i64::from(size), max));
            }
            let mut body = BytesMut::zeroed(size as usize);
            rd.read_exact(&mut body).await?;
            let Some(response) = handle(&mut session, body.freeze()).await? else { continue };
            out.clear();
            out.put_i32(response.len() as i32);
            wr.write_all(&out).await?;
            wr.write_all(&response).await?;
        }
    }
    .await;
    match result {
        Err(Closed::Eof) | Err(Closed::Shutdown) | Ok(()) => {}
        Err(e) => debug!(peer = %peer, reason = %e, "closing Kafka connection"),
    }
    let _ = wr.shutdown().await;
}

/// Decodes the request header, dispatches, and frames the response (header
/// + body, without the size prefix). `None`: no response (acks=0).
async fn handle(session: &mut Session, frame: Bytes) -> Result<Option<Bytes>, Closed> {
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

    let reply = if in_range {
        let flexible = key.request_header_version(version) >= 2;
        let req = Request { api_key: key, version, correlation_id, client_id, flexible, body: rd };
        (api.handler)(session, req).await?
    } else {
        api::api_versions::unsupported_version_response()?
    };
    let Reply::Body(body) = reply else { return Ok(None) };
    // ApiVersions responses always use header v0 (KIP-511).
    let response_header_version = if in_range { key.response_header_version(version) } else { 0 };
    let mut framed = BytesMut::with_capacity(5 + body.len());
    framed.put_i32(correlation_id);
    if response_header_version >= 1 {
        framed.put_u8(0); // no tagged fields
    }
    framed.extend_from_slice(&body);
    Ok(Some(framed.freeze()))
}
