//! The memory alarm: a protocol-neutral "the process uses too much memory"
//! signal, like RabbitMQ's `vm_memory_high_watermark`.
//!
//! The server shell samples the process's resident set every
//! [`SAMPLE_EVERY`] and sets the alarm while it is above the watermark.
//! Protocol services read it from the store ([`crate::Store::memory_alarm`])
//! and decide how to push back (AMQP: connection.blocked and no more reads
//! from publishing connections). The core itself does not act on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::ShutdownSignal;

/// How often the resident set is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The default watermark as a fraction of physical RAM (RabbitMQ: 0.4).
pub const WATERMARK_FRACTION_DEFAULT: f64 = 0.4;

/// The alarm state, one per store. `true` = over the watermark.
#[derive(Debug)]
pub struct MemoryAlarm {
    state: watch::Sender<bool>,
    /// Set by [`MemoryAlarm::force`]: the sampler leaves the state alone.
    forced: AtomicBool,
}

impl Default for MemoryAlarm {
    fn default() -> Self {
        MemoryAlarm { state: watch::Sender::new(false), forced: AtomicBool::new(false) }
    }
}

impl MemoryAlarm {
    /// A receiver that sees every change (and the current state).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    pub fn is_on(&self) -> bool {
        *self.state.borrow()
    }

    /// What the sampler reports (ignored while the state is forced).
    pub fn sampled(&self, over: bool) {
        if !self.forced.load(Ordering::Acquire) {
            self.set(over);
        }
    }

    /// Forces the alarm on or off (`None` hands it back to the sampler):
    /// for tests and operators.
    pub fn force(&self, state: Option<bool>) {
        self.forced.store(state.is_some(), Ordering::Release);
        if let Some(on) = state {
            self.set(on);
        }
    }

    fn set(&self, on: bool) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != on;
            *cur = on;
            changed
        });
    }
}

/// Physical RAM in bytes (`MemTotal` of /proc/meminfo); `None` off Linux.
pub fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The watermark a setting means: `None` is 40% of physical RAM (`None`
/// again if that cannot be read), `Some(0)` is no alarm.
pub fn resolve_watermark(setting: Option<u64>) -> Option<u64> {
    match setting {
        Some(0) => None,
        Some(bytes) => Some(bytes),
        None => physical_memory_bytes().map(|total| (total as f64 * WATERMARK_FRACTION_DEFAULT) as u64),
    }
}

/// Reads the resident set from /proc/self/statm (pages) without a libc call.
pub struct RssReader {
    page_bytes: u64,
}

impl RssReader {
    pub fn new() -> RssReader {
        RssReader { page_bytes: page_size().unwrap_or(4096) }
    }

    /// Resident bytes of this process; `None` off Linux.
    pub fn rss_bytes(&self) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        pages.checked_mul(self.page_bytes)
    }
}

impl Default for RssReader {
    fn default() -> Self {
        RssReader::new()
    }
}

/// AT_PAGESZ from the auxiliary vector (pairs of native-endian u64 on 64-bit).
fn page_size() -> Option<u64> {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == AT_PAGESZ).then_some(value)
    })
}

/// Samples until `stop` fires, setting `alarm` while the resident set is
/// above `watermark` bytes.
pub async fn run_sampler(alarm: std::sync::Arc<MemoryAlarm>, watermark: u64, stop: ShutdownSignal) {
    let reader = RssReader::new();
    if reader.rss_bytes().is_none() {
        warn!("cannot read /proc/self/statm: the memory alarm is off");
        return;
    }
    info!(watermark_bytes = watermark, "memory alarm armed");
    let stopped = stop.triggered();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let Some(rss) = reader.rss_bytes() else { continue };
        let over = rss > watermark;
        if over != alarm.is_on() {
            if over {
                warn!(rss_bytes = rss, watermark_bytes = watermark, "memory alarm on: publishers are blocked");
            } else {
                info!(rss_bytes = rss, watermark_bytes = watermark, "memory alarm off");
            }
        }
        alarm.sampled(over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_parses() {
        assert_eq!(parse_meminfo_total("MemTotal:       24521456 kB\nMemFree: 1 kB\n"), Some(24_521_456 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn watermark_settings_resolve() {
        assert_eq!(resolve_watermark(Some(0)), None);
        assert_eq!(resolve_watermark(Some(5)), Some(5));
        if let Some(total) = physical_memory_bytes() {
            let w = resolve_watermark(None).expect("a default on Linux");
            assert!(w > total / 3 && w < total / 2);
        }
    }

    #[test]
    fn rss_is_readable_here() {
        if std::path::Path::new("/proc/self/statm").exists() {
            let rss = RssReader::new().rss_bytes().expect("rss");
            assert!(rss > 1 << 20, "{rss}");
        }
    }

    #[test]
    fn forcing_overrides_the_sampler_until_released() {
        let alarm = MemoryAlarm::default();
        let rx = alarm.subscribe();
        alarm.force(Some(true));
        alarm.sampled(false);
        assert!(*rx.borrow());
        alarm.force(None);
        alarm.sampled(false);
        assert!(!*rx.borrow());
    }
}
