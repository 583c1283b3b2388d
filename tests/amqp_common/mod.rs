//! Harness for the AMQP end-to-end tests: an in-process polymq server on
//! 127.0.0.1:0 serving AMQP over a store in a temporary
//! directory, lapin clients, a raw-socket client for what lapin will not
//! send, and a restart on the same data directory.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use polymq::config::Config;
use polymq::server::{shutdown_channel, ProtocolService, Server, ServerError, ShutdownTrigger};
use polymq::Store;
use polymq_amqp::{AmqpConfig, AmqpService};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen. Generous: CI
/// runs debug builds of several test binaries at once on two cores.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(700);

struct Running {
    store: Arc<Store>,
    amqp: SocketAddr,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), ServerError>>,
}

pub struct TestBroker {
    cfg: AmqpConfig,
    fsync: polymq::FsyncPolicy,
    dir: tempfile::TempDir,
    running: Option<Running>,
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
        let dir = tempfile::tempdir().context("creating the store's temporary directory")?;
        let running = start_server(dir.path(), &cfg, fsync).await?;
        Ok(TestBroker { cfg, fsync, dir, running: Some(running) })
    }

    pub fn amqp_addr(&self) -> SocketAddr {
        self.running.as_ref().map(|r| r.amqp).expect("running")
    }

    /// The running server's store (for test hooks such as the memory alarm).
    pub fn store(&self) -> Arc<Store> {
        self.running.as_ref().map(|r| Arc::clone(&r.store)).expect("running")
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

    /// Shuts the server down as `polymq serve` does on SIGTERM, then opens
    /// the same data directory again on new ports.
    pub async fn restart(&mut self) -> Result<()> {
        let running = self.running.take().context("broker is not running")?;
        running.trigger.trigger();
        let stopped = tokio::time::timeout(Duration::from_secs(15), running.task)
            .await
            .context("server did not stop within 15 s of the shutdown signal")?
            .context("server task panicked")?;
        stopped.context("server stopped with an error")?;
        self.running = Some(start_server(self.dir.path(), &self.cfg, self.fsync).await.context("restarting on the same data directory")?);
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.trigger.trigger();
        }
    }
}

async fn start_server(dir: &Path, cfg: &AmqpConfig, fsync: polymq::FsyncPolicy) -> Result<Running> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let config = Config {
        data_dir: dir.to_path_buf(),
        mqtt_listen: loopback,
        amqp_listen: loopback,
        http_listen: loopback,
        fsync,
        ..Config::default()
    };
    let store_config = config.store_config();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await.context("store open panicked")??;
    let amqp: Arc<dyn ProtocolService> = AmqpService::new(Arc::clone(&store), cfg.clone()).await.context("starting AMQP")?;
    let store_handle = Arc::clone(&store);
    let server = Server::bind(&config, store, vec![(config.amqp_listen, amqp)]).await?;
    let addrs = server.local_addrs();
    let find = |p: &str| addrs.iter().find(|(n, _)| *n == p).map(|(_, a)| *a).with_context(|| format!("no {p} listener"));
    let amqp = find("amqp")?;
    let (trigger, signal) = shutdown_channel();
    let task = tokio::spawn(server.run(signal.triggered()));
    Ok(Running { store: store_handle, amqp, trigger, task })
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
