//! Sessions: the per-client state that outlives a connection, and the
//! registry that hands it from one connection to the next (takeover).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use polymq::queue::QueueId;
use tokio::sync::Notify;

use super::subs::SubOpts;

/// What a session keeps between connections (in memory; the parts that must
/// survive a restart are in the store: the queue, its bindings and the
/// subscription options).
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The session's own queue, which its non-shared subscriptions route into.
    /// `None` for a transient session until it first subscribes: a
    /// publish-only or idle clean session costs the store nothing.
    pub queue: Option<QueueId>,
    /// Durable (`mqtt/s/<id>`) or transient (`mqtt/t/<n>`).
    pub persistent: bool,
    /// Full filter (including `$share/<g>/`) -> options.
    pub subs: BTreeMap<String, SubOpts>,
    /// Inbound QoS 2 packet ids we answered PUBREC for and await PUBREL on.
    pub inbound_qos2: BTreeSet<u16>,
    /// Outbound QoS 2 packet ids we sent PUBREL for and await PUBCOMP on.
    pub outbound_pubrel: BTreeSet<u16>,
}

impl SessionState {
    pub fn new() -> SessionState {
        SessionState {
            queue: None,
            persistent: false,
            subs: BTreeMap::new(),
            inbound_qos2: BTreeSet::new(),
            outbound_pubrel: BTreeSet::new(),
        }
    }
}

/// What the connection holding a client id and one that wants to take it
/// over share: one small allocation per connection (a `watch` channel for
/// "done" cost several hundred bytes per idle client).
#[derive(Default)]
pub(crate) struct Handover {
    /// The holder was asked to leave: a take-over, or the server drains.
    kicked: AtomicBool,
    /// The holder's task, woken by a kick. A waker rather than a `Notify`:
    /// the holder polls it from its loop and keeps no `Notified` future
    /// (64 bytes in every idle connection).
    holder: Mutex<Option<Waker>>,
    /// The kick is the server's drain ([`Registry::drain`]).
    draining: AtomicBool,
    /// Set once the holder has released the id ([`Claim`] dropped).
    gone: AtomicBool,
    left: Notify,
}

impl Handover {
    /// Asks the holder to leave.
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let waker = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ready once the holder has been asked to leave.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.kicked.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        {
            let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
            if !holder.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *holder = Some(cx.waker().clone());
            }
        }
        // A kick between the first check and storing the waker found no waker.
        if self.kicked.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the holder was asked to leave because the server drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Completes once the holder's [`Claim`] is dropped.
    pub async fn gone(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            // Registered before the flag is read, so a drop in between wakes us.
            left.as_mut().enable();
            if self.gone.load(Ordering::Acquire) {
                return;
            }
            left.await;
        }
    }
}

/// The connection currently serving a client id.
struct Live {
    connection: u64,
    handover: Arc<Handover>,
}

#[derive(Default)]
struct Entry {
    live: Option<Live>,
    /// A persistent session whose client is away (boxed: most entries have none).
    parked: Option<Box<SessionState>>,
    /// The newest connection that claimed this client id: a will scheduled by
    /// an older connection is cancelled.
    last_connection: u64,
}

/// Client id -> session. One lock, held only for map operations.
#[derive(Default)]
pub(crate) struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Held by the connection that owns a client id; dropping it (after
/// [`Registry::release`]) tells a waiting successor that this one is done.
pub(crate) struct Claim {
    pub handover: Arc<Handover>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.handover.gone.store(true, Ordering::Release);
        self.handover.left.notify_waiters();
    }
}

pub(crate) enum ClaimResult {
    /// The id is ours; the parked session, if there was one.
    Claimed(Claim, Option<SessionState>),
    /// Another connection holds it: it has been asked to leave; wait for
    /// [`Handover::gone`].
    Busy(Arc<Handover>),
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `client_id` for `connection`, or asks the current holder to
    /// leave. `force` claims even if a holder is still there (it did not
    /// leave in time; its state is lost to it).
    pub fn claim(&self, client_id: &str, connection: u64, force: bool) -> ClaimResult {
        let mut map = self.lock();
        let entry = map.entry(client_id.to_owned()).or_default();
        if let Some(live) = &entry.live {
            if !force {
                live.handover.kick();
                return ClaimResult::Busy(Arc::clone(&live.handover));
            }
        }
        let handover = Arc::new(Handover::default());
        entry.live = Some(Live { connection, handover: Arc::clone(&handover) });
        entry.last_connection = connection;
        ClaimResult::Claimed(Claim { handover }, entry.parked.take().map(|b| *b))
    }

    /// The connection is over: park the session if it persists.
    pub fn release(&self, client_id: &str, connection: u64, parked: Option<SessionState>) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(client_id) else { return };
        if entry.live.as_ref().is_some_and(|l| l.connection == connection) {
            entry.live = None;
            entry.parked = parked.map(Box::new);
        }
        if entry.live.is_none() && entry.parked.is_none() && entry.last_connection == connection {
            map.remove(client_id);
        }
    }

    /// The server drains: asks every live connection to leave. A connection
    /// watches this (its claim's kick) instead of a shutdown future of its
    /// own, which would cost every idle connection ~170 bytes. One that claims
    /// its id after this has run sees the shutdown signal already set.
    pub fn drain(&self) {
        for entry in self.lock().values() {
            if let Some(live) = &entry.live {
                live.handover.draining.store(true, Ordering::Release);
                live.handover.kick();
            }
        }
    }

    /// Whether a will scheduled when `connection` ended should still go out:
    /// no newer connection has claimed the client id since.
    pub fn will_still_due(&self, client_id: &str, connection: u64) -> bool {
        self.lock().get(client_id).is_none_or(|e| e.last_connection <= connection)
    }
}
