//! STUB: replaced by the real store. Signatures here are stable.
use std::path::PathBuf;
use std::sync::Arc;

use crate::{FsyncPolicy, StoreError};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig { data_dir: data_dir.into(), fsync: FsyncPolicy::default() }
    }
}

/// A point-in-time copy of the store's counters, for /metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    pub appends_total: u64,
    pub append_bytes_total: u64,
    pub fsyncs_total: u64,
    pub log_bytes: u64,
    pub segments: u64,
    pub queues: u64,
    pub messages_ready: u64,
    pub messages_inflight: u64,
}

pub struct Store {
    _cfg: StoreConfig,
}

impl Store {
    /// Opens (recovering if needed) the store in `cfg.data_dir`, creating it if absent.
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StoreError::io(&cfg.data_dir, e))?;
        Ok(Arc::new(Store { _cfg: cfg }))
    }
    /// Flushes and fsyncs everything, stops the writer. Idempotent. Blocking.
    pub fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
    pub fn metrics(&self) -> StoreMetrics {
        StoreMetrics::default()
    }
}
