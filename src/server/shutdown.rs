//! The shutdown signal handed to every connection task.

use std::future::Future;

use tokio::sync::watch;

/// Tells a connection task that the server is draining. A protocol session
/// watches it (typically in its `select!` loop) so it can send its protocol's
/// goodbye (MQTT DISCONNECT, AMQP connection.close, ...) before it closes.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

/// The sending half; held by the server (or by a test).
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A linked trigger and signal. Protocol crates use it to drive a session in
/// tests without a whole server.
pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, ShutdownSignal { rx })
}

impl ShutdownTrigger {
    /// Starts the drain. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal { rx: self.tx.subscribe() }
    }
}

impl ShutdownSignal {
    /// True once shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown has begun (at once if it already has).
    ///
    /// Returns an owned future so it can sit in a `select!` arm next to a
    /// borrow of the session's other state.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the trigger was dropped: the server is gone, so
            // draining is the only sensible reading.
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn signal_completes_after_trigger_only() {
        let (trigger, signal) = shutdown_channel();
        assert!(!signal.is_triggered());
        let waiting = tokio::time::timeout(Duration::from_millis(20), signal.triggered()).await;
        assert!(waiting.is_err(), "must not complete before the trigger");
        trigger.trigger();
        assert!(signal.is_triggered());
        tokio::time::timeout(Duration::from_secs(1), signal.triggered()).await.expect("completes after trigger");
        // A signal taken after the trigger sees it too.
        assert!(trigger.signal().is_triggered());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (trigger, signal) = shutdown_channel();
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(1), signal.triggered()).await.expect("completes on drop");
    }
}
