//! The commit log. (Being written; see ARCHITECTURE.md.)
use std::str::FromStr;
use std::time::Duration;

/// When the log fsyncs, and so when an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync every group-commit batch; an append completes after its fsync.
    Always,
    /// fsync at most this often; an append completes after its write.
    Interval(Duration),
    /// Leave it to the OS; an append completes after its write.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(50))
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;
    /// `always`, `never`, `interval=<ms>` (also `interval` alone: 50 ms).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::default()),
            other => match other.strip_prefix("interval=") {
                Some(ms) => {
                    let ms: u64 = ms.trim_end_matches("ms").parse().map_err(|_| format!("bad fsync interval: {other}"))?;
                    if ms == 0 {
                        return Err("fsync interval must be > 0 ms (use `always`)".into());
                    }
                    Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
                }
                None => Err(format!("fsync policy must be always, never or interval=<ms>, got {other:?}")),
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}
