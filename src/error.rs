use std::path::PathBuf;

/// Errors at the core's boundary. Protocol crates map these to wire codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log segment {path} at byte {offset}: {reason}; refusing to start (move the file away or restore it)")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("unsupported segment format version {version} in {path}")]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("the store is poisoned after a failed write or fsync; restart to recover")]
    Poisoned,
    #[error("the store is closed")]
    Closed,
    /// The log's filesystem refuses writes for now (full, over quota, or
    /// remounted read-only): the append was not stored and nothing else was
    /// harmed; appends succeed again once it takes writes.
    #[error("the log's disk refuses writes (full or read-only): the message was not stored; retry later")]
    NoSpace,
    #[error("queue not found: {0}")]
    QueueNotFound(String),
    #[error("queue limit reached ({0} queues)")]
    QueueLimit(usize),
    #[error("invalid queue name: {0}")]
    InvalidQueueName(String),
    #[error("record too large: {size} bytes (max {max})")]
    RecordTooLarge { size: usize, max: usize },
    #[error("receipt handle is unknown or expired")]
    InvalidReceipt,
    #[error("queue {0} was redeclared with different settings")]
    Inequivalent(String),
    #[error("memory for transient messages is full ({0} bytes); retry later")]
    MemoryLimit(u64),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }

    /// Whether this is a write the filesystem refused outright (ENOSPC,
    /// EDQUOT, EROFS), as opposed to an error that leaves the file's state
    /// unknown (EIO, a failed fsync).
    pub(crate) fn is_write_refused(&self) -> bool {
        match self {
            StoreError::NoSpace => true,
            // ENOSPC, EROFS, EDQUOT (Linux numbering).
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull || matches!(source.raw_os_error(), Some(28 | 30 | 122))
            }
            _ => false,
        }
    }
}
