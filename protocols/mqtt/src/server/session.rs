//! Sessions: the per-client state that outlives a connection, and the
//! registry that hands it from one connection to the next (takeover).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use polymq::queue::QueueId;
use tokio::sync::{watch, Notify};

use super::subs::SubOpts;

/// What a session keeps between connections (in memory; the parts that must
/// survive a restart are in the store: the queue, its bindings and the
/// subscription options).
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The session's own queue, which its non-shared subscriptions route into.
    pub queue: QueueId,
    /// Durable (`mqtt/s/<id>`) or transient (`mqtt/t/<n>`).
    pub persistent: bool,
    /// Full filter (including `$share/<g>/`) -> options.
    pub subs: BTreeMap<String, SubOpts>,
    /// Inbound QoS 2 packet ids we answered PUBREC for and await PUBREL on.
    pub inbound_qos2: HashSet<u16>,
    /// Outbound QoS 2 packet ids we sent PUBREL for and await PUBCOMP on.
    pub outbound_pubrel: BTreeSet<u16>,
}

/// The connection currently serving a client id.
struct Live {
    connection: u64,
    kick: Arc<Notify>,
    done: watch::Receiver<()>,
}

#[derive(Default)]
struct Entry {
    live: Option<Live>,
    /// A persistent session whose client is away.
    parked: Option<SessionState>,
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
    pub kick: Arc<Notify>,
    _done: watch::Sender<()>,
}

pub(crate) enum ClaimResult {
    /// The id is ours; the parked session, if there was one.
    Claimed(Claim, Option<SessionState>),
    /// Another connection holds it: it has been asked to leave; wait on this.
    Busy(watch::Receiver<()>),
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
                live.kick.notify_one();
                return ClaimResult::Busy(live.done.clone());
            }
        }
        let kick = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(());
        entry.live = Some(Live { connection, kick: Arc::clone(&kick), done: done_rx });
        entry.last_connection = connection;
        ClaimResult::Claimed(Claim { kick, _done: done_tx }, entry.parked.take())
    }

    /// The connection is over: park the session if it persists.
    pub fn release(&self, client_id: &str, connection: u64, parked: Option<SessionState>) {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(client_id) else { return };
        if entry.live.as_ref().is_some_and(|l| l.connection == connection) {
            entry.live = None;
            entry.parked = parked;
        }
        if entry.live.is_none() && entry.parked.is_none() && entry.last_connection == connection {
            map.remove(client_id);
        }
    }

    /// Whether a will scheduled when `connection` ended should still go out:
    /// no newer connection has claimed the client id since.
    pub fn will_still_due(&self, client_id: &str, connection: u64) -> bool {
        self.lock().get(client_id).is_none_or(|e| e.last_connection <= connection)
    }
}
