//! Harness for the AMQP end-to-end tests: an in-process polymq server on
//! 127.0.0.1:0 serving AMQP over a store in a temporary
//! directory, lapin clients, a raw-socket client for what lapin will not
//! send, and a restart on the same data directory.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

#[path = "../server_common/mod.rs"]
mod server_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use polymq::server::ProtocolService;
use polymq::Store;
use polymq_amqp::{AmqpConfig, AmqpService};
use server_common::InProcess;

/// How long a test waits for something that should happen. Generous: CI
/// runs debug builds of several test binaries at once on two cores.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(700);

/// A polymq server with the AMQP service, restartable on the same data.
pub struct TestBroker {
    server: InProcess,
}

impl TestBroker {
    pub async fn start() -> Result<TestBroker> {
        TestBroker::start_with(AmqpConfig::default()).await
    }

    pub async fn start_with(cfg: AmqpConfig) -> Result<TestBroker> {
        TestBroker::start_full(cfg, polymq::FsyncPolicy::default()).await
    }

    /// With `fsync = always` every append waits for an fsync: what a client
    /// does right after a publish then races the log.
    pub async fn start_fsync_always() -> Result<TestBroker> {
        TestBroker::start_full(AmqpConfig::default(), polymq::FsyncPolicy::Always).await
    }

    async fn start_full(cfg: AmqpConfig, fsync: polymq::FsyncPolicy) -> Result<TestBroker> {
        let server = InProcess::start(
            fsync,
            Box::new(move |store| {
                let cfg = cfg.clone();
                Box::pin(async move {
                    let amqp: Arc<dyn ProtocolService> = AmqpService::new(store, cfg).await.context("starting AMQP")?;
                    Ok(vec![amqp])
                })
            }),
        )
        .await?;
        Ok(TestBroker { server })
    }

    pub fn amqp_addr(&self) -> SocketAddr {
        self.server.addr("amqp")
    }

    /// The running server's store (for test hooks such as the memory alarm).
    pub fn store(&self) -> Arc<Store> {
        self.server.store()
    }

    /// Shuts the server down as `polymq serve` does on SIGTERM, then opens
    /// the same data directory again on new ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart().await
    }

    /// The URI of `vhost` (percent-encoded, so `/` is `%2f`).
    pub fn uri_vhost(&self, vhost: &str) -> String {
        let encoded: String = vhost
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02x}") })
            .collect();
        format!("amqp://guest:guest@{}/{encoded}", self.amqp_addr())
    }

    pub fn uri_as(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@{}/%2f", self.amqp_addr())
    }

    pub fn uri(&self) -> String {
        self.uri_as("guest", "guest")
    }

    pub async fn connect(&self) -> Result<Connection> {
        Connection::connect(&self.uri(), ConnectionProperties::default()).await.context("AMQP connect")
    }

    pub async fn channel(&self) -> Result<(Connection, Channel)> {
        let conn = self.connect().await?;
        let ch = conn.create_channel().await.context("channel.open")?;
        Ok((conn, ch))
    }
}

/// The next delivery of a consumer, within [`WAIT`].
pub async fn next(consumer: &mut Consumer) -> Result<lapin::message::Delivery> {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .context("no delivery within the wait")?
        .context("consumer stream ended")?
        .context("consumer error")
}

/// Asserts no delivery arrives within [`QUIET`].
pub async fn nothing(consumer: &mut Consumer) -> Result<()> {
    match tokio::time::timeout(QUIET, consumer.next()).await {
        Err(_) => Ok(()),
        Ok(Some(Ok(d))) => anyhow::bail!("unexpected delivery: {:?}", String::from_utf8_lossy(&d.data)),
        Ok(other) => anyhow::bail!("consumer ended: {:?}", other.map(|r| r.map(|d| d.delivery_tag))),
    }
}

/// Both renderings of an error, to look for RabbitMQ's reply names in.
pub fn error_text(e: &lapin::Error) -> String {
    format!("{e} / {e:?}")
}
