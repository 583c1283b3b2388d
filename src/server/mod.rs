//! The server shell: listeners, one task per connection under one global
//! connection limit, the health/metrics HTTP endpoint, and graceful shutdown.
//!
//! It knows no protocol. Each listener is paired with a [`ProtocolService`]
//! that owns a connection from accept to close; the shell only counts,
//! limits and drains connections.

mod http;
pub mod memory;
mod metrics;
mod shutdown;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::config::{Config, CONNECTION_COUNT_MAX_CEILING};
use crate::{Store, StoreError};
use metrics::ProtocolCounters;

pub use shutdown::{shutdown_channel, ShutdownSignal, ShutdownTrigger};

/// How long shutdown waits for connection tasks to finish before it closes
/// the store anyway. Long enough for sessions to send their goodbye and
/// flush, short enough for an orchestrator's kill timeout (Kubernetes: 30 s).
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(5);

/// Protocol label used for the HTTP listener in [`Server::local_addrs`].
pub const HTTP_PROTOCOL: &str = "http";

/// The future a [`ProtocolService`] returns for one connection.
pub type ConnectionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One wire protocol. The shell calls `serve_connection` once per accepted
/// connection, on its own task; the connection is closed when the future
/// completes (the stream is dropped).
pub trait ProtocolService: Send + Sync + 'static {
    /// Short lowercase name; the `protocol` label in logs and metrics.
    fn name(&self) -> &'static str;

    /// Serves one connection until the peer leaves, the session ends, or
    /// `shutdown` fires (then the session should say its protocol's goodbye
    /// and return promptly: the shell waits at most its grace period).
    fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture;
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid server setting: {0}")]
    Config(String),
    #[error("closing the store failed: {0}")]
    StoreClose(#[source] StoreError),
    #[error("closing the store panicked: {0}")]
    StoreClosePanicked(String),
}

struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: Arc<dyn ProtocolService>,
    counters: Arc<ProtocolCounters>,
}

/// Bound listeners, ready to [`run`](Server::run).
pub struct Server {
    listeners: Vec<Listener>,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    store: Arc<Store>,
    protocols: Vec<Arc<ProtocolCounters>>,
    connection_max: usize,
    shutdown_grace: Duration,
    /// Resident bytes above which the memory alarm is on (`None`: no alarm).
    memory_watermark: Option<u64>,
}

impl Server {
    /// Binds every protocol listener and the HTTP listener (at
    /// `config.http_listen`). Fails on the first address that cannot be bound,
    /// naming it. Listeners do not accept until [`run`](Server::run).
    pub async fn bind(
        config: &Config,
        store: Arc<Store>,
        services: Vec<(SocketAddr, Arc<dyn ProtocolService>)>,
    ) -> Result<Server, ServerError> {
        if config.connection_max == 0 || config.connection_max > CONNECTION_COUNT_MAX_CEILING {
            return Err(ServerError::Config(format!(
                "connection_max must be within 1..={CONNECTION_COUNT_MAX_CEILING}, got {}",
                config.connection_max
            )));
        }
        // Listeners of the same protocol (say, two MQTT ports) share counters
        // so each metric series has one `protocol` label value.
        let mut by_name: BTreeMap<&'static str, Arc<ProtocolCounters>> = BTreeMap::new();
        let mut listeners = Vec::with_capacity(services.len());
        for (addr, service) in services {
            let protocol = service.name();
            let (listener, local_addr) = bind_one(protocol, addr).await?;
            let counters = Arc::clone(by_name.entry(protocol).or_insert_with(|| Arc::new(ProtocolCounters::new(protocol))));
            listeners.push(Listener { listener, local_addr, service, counters });
        }
        let (http_listener, http_addr) = bind_one(HTTP_PROTOCOL, config.http_listen).await?;
        Ok(Server {
            listeners,
            http_listener,
            http_addr,
            store,
            protocols: by_name.into_values().collect(),
            connection_max: config.connection_max,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            memory_watermark: memory::resolve_watermark(config.memory_high_watermark_bytes),
        })
    }

    /// The addresses actually bound (port 0 resolved), as (protocol, address)
    /// in the order given to [`bind`](Server::bind), HTTP last.
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.iter().map(|l| (l.service.name(), l.local_addr)).chain(std::iter::once((HTTP_PROTOCOL, self.http_addr))).collect()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Replaces [`SHUTDOWN_GRACE_DEFAULT`].
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Accepts connections until `shutdown` completes, then stops accepting,
    /// signals every connection task, waits up to the grace period for them,
    /// and closes the store (flush + fsync).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server { listeners, http_listener, http_addr, store, protocols, connection_max, shutdown_grace, memory_watermark } = self;
        let permit_count = u32::try_from(connection_max)
            .map_err(|_| ServerError::Config(format!("connection_max {connection_max} does not fit in u32")))?;
        let permits = Arc::new(Semaphore::new(connection_max));
        let ready = Arc::new(AtomicBool::new(false));

        // HTTP has its own stop signal: it keeps answering (healthz 503,
        // metrics) while connections drain, and stops only after.
        let (http_stop, http_stop_signal) = shutdown_channel();
        let http_state = Arc::new(http::HttpState { store: Arc::clone(&store), protocols, ready: Arc::clone(&ready), connection_max });
        let http_task = tokio::spawn(http::serve(http_listener, http_state, http_stop_signal));
        info!(protocol = %HTTP_PROTOCOL, addr = %http_addr, "listening");

        let (drain, drain_signal) = shutdown_channel();
        if let Some(watermark) = memory_watermark {
            let held = Arc::clone(&store);
            tokio::spawn(memory::run_sampler(
                Arc::clone(store.memory_alarm()),
                watermark,
                move || held.accounted_memory_bytes(),
                drain_signal.clone(),
            ));
        }
        let mut accept_tasks = Vec::with_capacity(listeners.len());
        for listener in listeners {
            info!(protocol = %listener.service.name(), addr = %listener.local_addr, "listening");
            accept_tasks.push(tokio::spawn(accept_loop(listener, Arc::clone(&permits), drain_signal.clone())));
        }
        ready.store(true, Ordering::Release);
        info!(connection_max, "ready");

        shutdown.await;
        info!("shutdown: no longer accepting connections; draining");
        ready.store(false, Ordering::Release);
        drain.trigger();
        for task in accept_tasks {
            // Joining drops the listeners, so new connects are refused rather
            // than left in the kernel's backlog.
            if let Err(e) = task.await {
                error!(error = %e, "accept loop panicked");
            }
        }

        let drained = tokio::time::timeout(shutdown_grace, permits.acquire_many(permit_count)).await;
        match drained {
            Ok(_) => info!("shutdown: all connections closed"),
            Err(_) => {
                let open = connection_max.saturating_sub(permits.available_permits());
                warn!(
                    open,
                    grace_ms = shutdown_grace.as_millis() as u64,
                    "shutdown: connections still open after the grace period; closing the store anyway"
                );
            }
        }
        http_stop.trigger();
        if let Err(e) = http_task.await {
            error!(error = %e, "http server panicked");
        }

        // close() blocks on flush + fsync: keep it off the async workers.
        let closing = Arc::clone(&store);
        let closed = tokio::task::spawn_blocking(move || closing.close()).await;
        match closed {
            Ok(Ok(())) => {
                info!("shutdown: store closed (flushed and fsynced)");
                Ok(())
            }
            Ok(Err(e)) => Err(ServerError::StoreClose(e)),
            Err(join) => Err(ServerError::StoreClosePanicked(join.to_string())),
        }
    }
}

async fn bind_one(protocol: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_err = |source| ServerError::Bind { protocol, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local_addr))
}

async fn accept_loop(listener: Listener, permits: Arc<Semaphore>, drain: ShutdownSignal) {
    let Listener { listener, local_addr, service, counters } = listener;
    let protocol = service.name();
    let draining = drain.triggered();
    tokio::pin!(draining);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                conn
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, the
                // condition clears as connections close.
                warn!(protocol = %protocol, addr = %local_addr, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Accept-then-close, rather than leaving the connection in the
        // backlog, gives the client a prompt answer and frees the kernel slot.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            counters.count_rejected();
            debug!(protocol = %protocol, %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let open = counters.open_connection();
        let connection = Arc::clone(&service).serve_connection(stream, peer, drain.clone());
        tokio::spawn(async move {
            connection.await;
            drop(open);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests;
