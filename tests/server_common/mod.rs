//! An in-process polymq server for the end-to-end tests: a store in a
//! temporary directory, the protocol services a test binary asks for on
//! 127.0.0.1:0, and a restart on the same data the way `polymq serve` does it
//! on SIGTERM (connections drained, the store closed, opened again on new
//! ports). The per-protocol harnesses (`amqp_common`, `kafka_common`) wrap it
//! with their clients.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use polymq::config::Config;
use polymq::server::{shutdown_channel, ProtocolService, Server, ServerError, ShutdownTrigger};
use polymq::Store;
use tokio::task::JoinHandle;

/// The protocol services of one start, made over its store.
pub type Services = Pin<Box<dyn Future<Output = Result<Vec<Arc<dyn ProtocolService>>>> + Send>>;
pub type MakeServices = Box<dyn Fn(Arc<Store>) -> Services + Send + Sync>;

struct Running {
    store: Arc<Store>,
    addrs: Vec<(&'static str, SocketAddr)>,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), ServerError>>,
}

pub struct InProcess {
    make: MakeServices,
    fsync: polymq::FsyncPolicy,
    dir: tempfile::TempDir,
    running: Option<Running>,
}

impl InProcess {
    pub async fn start(fsync: polymq::FsyncPolicy, make: MakeServices) -> Result<InProcess> {
        let dir = tempfile::tempdir().context("creating the store's temporary directory")?;
        let running = start_server(dir.path(), fsync, &make).await?;
        Ok(InProcess { make, fsync, dir, running: Some(running) })
    }

    /// The address the service named `protocol` listens on.
    pub fn addr(&self, protocol: &str) -> SocketAddr {
        let running = self.running.as_ref().expect("running");
        running.addrs.iter().find(|(p, _)| *p == protocol).map(|(_, a)| *a).unwrap_or_else(|| panic!("no {protocol} listener"))
    }

    /// The running server's store (to check what a protocol wrote, or for
    /// test hooks such as the memory alarm).
    pub fn store(&self) -> Arc<Store> {
        self.running.as_ref().map(|r| Arc::clone(&r.store)).expect("running")
    }

    /// Shuts the server down as `polymq serve` does on SIGTERM, then opens
    /// the same data directory again on new ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// The data directory (to look at the log while the server is stopped).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens the data directory again after [`InProcess::stop`], on new ports.
    pub async fn start_again(&mut self) -> Result<()> {
        anyhow::ensure!(self.running.is_none(), "broker is running");
        let running = start_server(self.dir.path(), self.fsync, &self.make).await.context("restarting on the same data directory")?;
        self.running = Some(running);
        Ok(())
    }

    /// Shuts the server down as `polymq serve` does on SIGTERM and closes
    /// its store.
    pub async fn stop(&mut self) -> Result<()> {
        let running = self.running.take().context("broker is not running")?;
        running.trigger.trigger();
        let Running { store, task, .. } = running;
        // The grace period is 5 s; past 15 s the server is stuck.
        let stopped = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .context("server did not stop within 15 s of the shutdown signal")?
            .context("server task panicked")?;
        stopped.context("server stopped with an error")?;
        tokio::task::spawn_blocking(move || store.close()).await.context("close panicked")??;
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // The task finishes on the test's runtime or is dropped with it.
            running.trigger.trigger();
        }
    }
}

async fn start_server(dir: &Path, fsync: polymq::FsyncPolicy, make: &MakeServices) -> Result<Running> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let config = Config {
        data_dir: dir.to_path_buf(),
        mqtt_listen: loopback,
        amqp_listen: loopback,
        kafka_listen: loopback,
        http_listen: loopback,
        fsync,
        ..Config::default()
    };
    let store_config = config.store_config();
    // Opening runs recovery: blocking I/O, kept off the async workers as the binary does.
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await.context("store open panicked")??;
    let services = make(Arc::clone(&store)).await?;
    let server = Server::bind(&config, Arc::clone(&store), services.into_iter().map(|s| (loopback, s)).collect()).await?;
    let addrs = server.local_addrs();
    let (trigger, signal) = shutdown_channel();
    let task = tokio::spawn(server.run(signal.triggered()));
    Ok(Running { store, addrs, trigger, task })
}
