//! Connection counters and the Prometheus text exposition (format 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::StoreMetrics;

/// Counters of one protocol, shared by all its listeners.
#[derive(Debug)]
pub(crate) struct ProtocolCounters {
    pub name: &'static str,
    open: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl ProtocolCounters {
    pub fn new(name: &'static str) -> Self {
        ProtocolCounters { name, open: AtomicU64::new(0), accepted: AtomicU64::new(0), rejected: AtomicU64::new(0) }
    }

    /// Counts an accepted connection as open until the guard drops, which
    /// also covers a connection task that panics.
    pub fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection { counters: Arc::clone(self) }
    }

    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct OpenConnection {
    counters: Arc<ProtocolCounters>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Renders store and connection metrics as Prometheus text.
pub(crate) fn render(store: &StoreMetrics, protocols: &[Arc<ProtocolCounters>], connection_max: usize) -> String {
    let mut w = PromWriter { out: String::with_capacity(4096) };
    w.single("polymq_log_appends_total", "counter", "Records appended to the commit log.", store.appends_total);
    w.single("polymq_log_append_bytes_total", "counter", "Bytes appended to the commit log.", store.append_bytes_total);
    w.single("polymq_log_fsyncs_total", "counter", "fsync calls issued by the log writer.", store.fsyncs_total);
    w.single(
        "polymq_log_appends_refused_no_space_total",
        "counter",
        "Appends refused because the disk was full (the store stays open; they succeed again once space returns).",
        store.appends_refused_no_space_total,
    );
    w.single("polymq_log_bytes", "gauge", "Bytes held in log segments on disk.", store.log_bytes);
    w.single("polymq_log_segments", "gauge", "Log segment files.", store.segments);
    w.single("polymq_queues", "gauge", "Queues that exist.", store.queues);
    w.single("polymq_messages_ready", "gauge", "Messages waiting to be delivered.", store.messages_ready);
    w.single("polymq_messages_inflight", "gauge", "Messages delivered and not yet acked.", store.messages_inflight);

    let per_protocol = |f: fn(&ProtocolCounters) -> u64| -> Vec<(&'static str, u64)> { protocols.iter().map(|p| (p.name, f(p))).collect() };
    w.labelled("polymq_connections", "gauge", "Open client connections.", &per_protocol(|p| p.open.load(Ordering::Relaxed)));
    w.labelled(
        "polymq_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &per_protocol(|p| p.accepted.load(Ordering::Relaxed)),
    );
    w.labelled(
        "polymq_connections_rejected_total",
        "counter",
        "Client connections closed at once because connection_max was reached.",
        &per_protocol(|p| p.rejected.load(Ordering::Relaxed)),
    );
    w.single("polymq_connections_max", "gauge", "Configured limit on open client connections across all protocols.", connection_max as u64);
    w.out
}

struct PromWriter {
    out: String,
}

impl PromWriter {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    fn labelled(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        self.header(name, kind, help);
        for (protocol, value) in samples {
            let _ = writeln!(self.out, "{name}{{protocol=\"{}\"}} {value}", escape_label(protocol));
        }
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mqtt = Arc::new(ProtocolCounters::new("mqtt"));
        let kafka = Arc::new(ProtocolCounters::new("kafka"));
        let held = mqtt.open_connection();
        let _closed = kafka.open_connection();
        drop(mqtt.open_connection());
        kafka.count_rejected();
        let store = StoreMetrics { appends_total: 3, log_bytes: 99, ..StoreMetrics::default() };
        let text = render(&store, &[mqtt.clone(), kafka], 10);

        assert!(text.contains("# TYPE polymq_log_appends_total counter\npolymq_log_appends_total 3\n"), "{text}");
        assert!(text.contains("polymq_log_bytes 99\n"));
        assert!(text.contains("polymq_connections{protocol=\"mqtt\"} 1\n"), "{text}");
        assert!(text.contains("polymq_connections{protocol=\"kafka\"} 1\n"));
        assert!(text.contains("polymq_connections_accepted_total{protocol=\"mqtt\"} 2\n"));
        assert!(text.contains("polymq_connections_rejected_total{protocol=\"kafka\"} 1\n"));
        assert!(text.contains("polymq_connections_max 10\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE line for {name}");
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP line for {name}");
        }
        drop(held);
        assert_eq!(mqtt.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
