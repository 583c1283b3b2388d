//! Stand-in for a protocol whose crate has not landed yet. Each protocol
//! crate replaces its placeholder in `main.rs` when it arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use polymq::server::{ConnectionFuture, ProtocolService, ShutdownSignal};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::debug;

/// How long an idle connection is kept before it is closed, like a real
/// broker's handshake timeout (RabbitMQ: 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts a connection and closes it as soon as the client sends anything
/// (a real client's first packet, which we cannot answer yet), after
/// [`HANDSHAKE_TIMEOUT`], or on shutdown. Holding idle connections until then,
/// rather than closing at once, keeps the shell's connection accounting
/// observable from outside (limits, drain) before any protocol exists.
pub struct PlaceholderService {
    name: &'static str,
}

impl PlaceholderService {
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(PlaceholderService { name })
    }
}

impl ProtocolService for PlaceholderService {
    fn name(&self) -> &'static str {
        self.name
    }

    fn serve_connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture {
        Box::pin(async move {
            let mut first_bytes = [0u8; 512];
            let reason = tokio::select! {
                read = stream.read(&mut first_bytes) => match read {
                    Ok(0) | Err(_) => "peer closed",
                    Ok(_) => "protocol not implemented yet",
                },
                _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => "idle timeout",
                _ = shutdown.triggered() => "shutdown",
            };
            debug!(protocol = %self.name, %peer, reason, "placeholder closing connection");
        })
    }
}
