//! The memory alarm: a protocol-neutral "the process uses too much memory"
//! signal, like RabbitMQ's `vm_memory_high_watermark`.
//!
//! The server shell samples the process's resident set every
//! [`SAMPLE_EVERY`] together with the bytes the broker itself accounts for
//! ([`crate::Store::accounted_memory_bytes`]: bodies of memory-only
//! messages) and applies [`AlarmRule`]:
//!
//! - **on** when RSS is above the high watermark;
//! - **off** when RSS falls below the clear mark ([`CLEAR_FRACTION`] of the
//!   watermark, so the alarm does not flap around one value), **or** when the
//!   broker has released at least the hysteresis band (watermark − clear
//!   mark) of its accounted bytes since the alarm went on. The allocator
//!   keeps freed memory (glibc malloc, the allocator in use, has no trim call
//!   reachable without `unsafe`), so RSS alone may never fall after a burst
//!   and publishers would stay blocked forever; memory the broker released is
//!   free for it to reuse even while RSS still counts it;
//! - after an off by release while RSS is still above the watermark, **on
//!   again** only when RSS grows by the band over its value at that moment or
//!   the accounted bytes grow back by the band (a drop of RSS below the clear
//!   mark ends that state).
//!
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

/// The clear mark as a fraction of the watermark, in tenths: the alarm goes
/// off when RSS falls below 90% of the watermark.
pub const CLEAR_FRACTION: (u64, u64) = (9, 10);

/// What a sample changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    On,
    /// RSS fell below the clear mark.
    OffBelowClearMark,
    /// The broker released at least the band of its accounted bytes.
    OffReleased,
}

/// The alarm's rule as plain state (see the module docs): fed one sample at
/// a time, no clock, no I/O.
#[derive(Debug, Clone)]
pub struct AlarmRule {
    high: u64,
    clear: u64,
    on: bool,
    /// While on: the most accounted bytes seen since it went on.
    accounted_max: u64,
    /// After an off by release with RSS still at or above the clear mark:
    /// (RSS, accounted bytes) at that moment.
    released_at: Option<(u64, u64)>,
}

impl AlarmRule {
    pub fn new(high: u64) -> AlarmRule {
        let clear = (high as u128 * CLEAR_FRACTION.0 as u128 / CLEAR_FRACTION.1 as u128) as u64;
        AlarmRule { high, clear, on: false, accounted_max: 0, released_at: None }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The clear mark in bytes.
    pub fn clear_mark(&self) -> u64 {
        self.clear
    }

    /// The hysteresis band (watermark − clear mark), at least one byte.
    pub fn band(&self) -> u64 {
        (self.high - self.clear).max(1)
    }

    /// Feeds one sample: resident bytes and the broker's accounted bytes.
    pub fn sample(&mut self, rss: u64, accounted: u64) -> Option<Transition> {
        let band = self.band();
        if self.on {
            self.accounted_max = self.accounted_max.max(accounted);
            if rss < self.clear {
                self.on = false;
                return Some(Transition::OffBelowClearMark);
            }
            if self.accounted_max - accounted >= band {
                self.on = false;
                self.released_at = Some((rss, accounted));
                return Some(Transition::OffReleased);
            }
            return None;
        }
        if rss < self.clear {
            self.released_at = None;
        }
        let over = rss > self.high
            && match self.released_at {
                None => true,
                Some((r, a)) => rss >= r.saturating_add(band) || accounted >= a.saturating_add(band),
            };
        if over {
            self.on = true;
            self.accounted_max = accounted;
            self.released_at = None;
            return Some(Transition::On);
        }
        None
    }
}

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

/// Samples until `stop` fires, setting `alarm` as [`AlarmRule`] says for
/// the resident set against `watermark` bytes and `accounted()`, the bytes
/// the broker holds and can release ([`crate::Store::accounted_memory_bytes`]).
pub async fn run_sampler(
    alarm: std::sync::Arc<MemoryAlarm>,
    watermark: u64,
    accounted: impl Fn() -> u64 + Send + 'static,
    stop: ShutdownSignal,
) {
    let reader = RssReader::new();
    if reader.rss_bytes().is_none() {
        warn!("cannot read /proc/self/statm: the memory alarm is off");
        return;
    }
    let mut rule = AlarmRule::new(watermark);
    info!(watermark_bytes = watermark, clear_mark_bytes = rule.clear_mark(), "memory alarm armed");
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
        let held = accounted();
        match rule.sample(rss, held) {
            Some(Transition::On) => {
                warn!(rss_bytes = rss, accounted_bytes = held, watermark_bytes = watermark, "memory alarm on: publishers are blocked")
            }
            Some(Transition::OffBelowClearMark) => {
                info!(rss_bytes = rss, clear_mark_bytes = rule.clear_mark(), "memory alarm off: below the clear mark")
            }
            Some(Transition::OffReleased) => info!(
                rss_bytes = rss,
                accounted_bytes = held,
                "memory alarm off: the broker released its memory (the allocator keeps the pages)"
            ),
            None => {}
        }
        alarm.sampled(rule.is_on());
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

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_alarm_clears_below_the_clear_mark_not_at_the_watermark() {
        let mut r = AlarmRule::new(100 * MIB);
        assert_eq!(r.clear_mark(), 90 * MIB);
        assert_eq!(r.sample(100 * MIB, 0), None, "at the watermark is not above it");
        assert_eq!(r.sample(101 * MIB, 0), Some(Transition::On));
        assert_eq!(r.sample(95 * MIB, 0), None, "between the marks it stays on");
        assert_eq!(r.sample(90 * MIB, 0), None);
        assert_eq!(r.sample(89 * MIB, 0), Some(Transition::OffBelowClearMark));
        assert_eq!(r.sample(99 * MIB, 0), None, "between the marks it stays off");
        assert_eq!(r.sample(101 * MIB, 0), Some(Transition::On));
    }

    #[test]
    fn releasing_accounted_memory_clears_the_alarm_while_rss_stays_high() {
        let mut r = AlarmRule::new(100 * MIB);
        assert_eq!(r.sample(120 * MIB, 30 * MIB), Some(Transition::On));
        // More held while on raises the reference.
        assert_eq!(r.sample(125 * MIB, 40 * MIB), None);
        // Released less than the band (10 MiB): still on.
        assert_eq!(r.sample(125 * MIB, 31 * MIB), None);
        assert_eq!(r.sample(125 * MIB, 30 * MIB), Some(Transition::OffReleased));
        // RSS stays where the allocator left it: no flapping back on.
        for _ in 0..10 {
            assert_eq!(r.sample(125 * MIB, 30 * MIB), None);
        }
        // Reuse of the freed memory that does not grow RSS is fine, up to the band.
        assert_eq!(r.sample(125 * MIB, 39 * MIB), None);
        assert_eq!(r.sample(125 * MIB, 40 * MIB), Some(Transition::On), "holding the band again");
        assert_eq!(r.sample(125 * MIB, 0), Some(Transition::OffReleased));
        assert_eq!(r.sample(134 * MIB, 0), None);
        assert_eq!(r.sample(135 * MIB, 0), Some(Transition::On), "RSS grew by the band");
    }

    #[test]
    fn without_accounted_memory_to_release_only_rss_clears_it() {
        let mut r = AlarmRule::new(100 * MIB);
        assert_eq!(r.sample(120 * MIB, 0), Some(Transition::On));
        for _ in 0..10 {
            assert_eq!(r.sample(120 * MIB, 0), None);
        }
        assert_eq!(r.sample(80 * MIB, 0), Some(Transition::OffBelowClearMark));
    }

    #[test]
    fn a_drop_below_the_clear_mark_ends_the_released_state() {
        let mut r = AlarmRule::new(100 * MIB);
        assert_eq!(r.sample(120 * MIB, 20 * MIB), Some(Transition::On));
        assert_eq!(r.sample(120 * MIB, 0), Some(Transition::OffReleased));
        assert_eq!(r.sample(50 * MIB, 0), None);
        assert_eq!(r.sample(101 * MIB, 0), Some(Transition::On), "the plain watermark again");
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
