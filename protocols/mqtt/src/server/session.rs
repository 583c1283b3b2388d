//! Sessions: the per-client state that outlives a connection, and the
//! registry that hands it from one connection to the next (takeover).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use polymq::queue::QueueId;

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
/// Why a connection was asked to leave; the strongest reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Kick {
    /// Nothing from the client for 1.5 x its keep-alive.
    KeepAlive = 1,
    TakenOver = 2,
    /// The server drains.
    Drain = 3,
}

#[derive(Default)]
pub(crate) struct Handover {
    /// 0, or the strongest [`Kick`] so far.
    kicked: AtomicU8,
    /// The holder's task, woken by a kick. A waker rather than a `Notify`:
    /// the holder polls it from its loop and keeps no `Notified` future
    /// (64 bytes in every idle connection).
    holder: Mutex<Option<Waker>>,
    /// 1.5 x the holder's keep-alive, ms; 0: none. Enforced by
    /// [`Registry::expire_idle`] rather than a timer in every connection.
    keep_alive_ms: AtomicU32,
    /// When the holder last received a packet ([`Registry::now_ms`]).
    last_rx_ms: AtomicU64,
    /// Keep-alive is not enforced while the holder is not read (memory alarm).
    paused: AtomicBool,
    /// Set once the holder has released the id ([`Claim`] dropped).
    gone: AtomicBool,
}

impl Handover {
    /// Asks the holder to leave.
    fn kick(&self, why: Kick) {
        self.kicked.fetch_max(why as u8, Ordering::AcqRel);
        let waker = self.holder.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ready once the holder has been asked to leave.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        if let Some(why) = self.kick_reason() {
            return Poll::Ready(why);
        }
        {
            let mut holder = self.holder.lock().unwrap_or_else(|e| e.into_inner());
            if !holder.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *holder = Some(cx.waker().clone());
            }
        }
        // A kick between the first check and storing the waker found no waker.
        match self.kick_reason() {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        }
    }

    fn kick_reason(&self) -> Option<Kick> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Kick::KeepAlive),
            2 => Some(Kick::TakenOver),
            _ => Some(Kick::Drain),
        }
    }

    /// The holder's keep-alive limit (1.5 x its keep-alive), `None` for none.
    pub fn set_keep_alive(&self, limit: Option<Duration>) {
        let ms = limit.map_or(0, |l| u32::try_from(l.as_millis()).unwrap_or(u32::MAX).max(1));
        self.keep_alive_ms.store(ms, Ordering::Relaxed);
    }

    /// The holder received something at `now_ms` ([`Registry::now_ms`]).
    pub fn received(&self, now_ms: u64) {
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Stops (`true`) or resumes keep-alive enforcement.
    pub fn pause_keep_alive(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Completes once the holder's [`Claim`] is dropped. Polled: take-overs
    /// are rare, and a `Notify` here would cost every connection 32 bytes.
    pub async fn gone(&self) {
        while !self.gone.load(Ordering::Acquire) {
            tokio::time::sleep(crate::limits::TAKEOVER_POLL).await;
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

/// Client id -> session, in [`REGISTRY_SHARDS`] maps under their own locks,
/// each held only for map operations: the keep-alive sweep and a drain walk
/// one shard at a time, so with a million sessions a CONNECT waits for at
/// most one shard's walk, not all of them.
pub(crate) struct Registry {
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
    hasher: RandomState,
    /// Origin of [`Registry::now_ms`].
    epoch: Instant,
}

/// Shards of the session registry (a power of two).
const REGISTRY_SHARDS: usize = 64;
const _: () = assert!(REGISTRY_SHARDS.is_power_of_two());

impl Default for Registry {
    fn default() -> Registry {
        Registry { shards: (0..REGISTRY_SHARDS).map(|_| Mutex::default()).collect(), hasher: RandomState::new(), epoch: Instant::now() }
    }
}

/// Held by the connection that owns a client id; dropping it (after
/// [`Registry::release`]) tells a waiting successor that this one is done.
pub(crate) struct Claim {
    pub handover: Arc<Handover>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.handover.gone.store(true, Ordering::Release);
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
    /// The shard holding `client_id`.
    fn lock(&self, client_id: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let i = self.hasher.hash_one(client_id) as usize & (REGISTRY_SHARDS - 1);
        lock_shard(&self.shards[i])
    }

    /// Calls `f` with every live connection's handover, one shard locked at a time.
    fn each_live(&self, mut f: impl FnMut(&Handover)) {
        for shard in self.shards.iter() {
            for entry in lock_shard(shard).values() {
                if let Some(live) = &entry.live {
                    f(&live.handover);
                }
            }
        }
    }

    /// Claims `client_id` for `connection`, or asks the current holder to
    /// leave. `force` claims even if a holder is still there (it did not
    /// leave in time; its state is lost to it).
    pub fn claim(&self, client_id: &str, connection: u64, force: bool) -> ClaimResult {
        let mut map = self.lock(client_id);
        let entry = map.entry(client_id.to_owned()).or_default();
        if let Some(live) = &entry.live {
            if !force {
                live.handover.kick(Kick::TakenOver);
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
        let mut map = self.lock(client_id);
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
        self.each_live(|h| h.kick(Kick::Drain));
    }

    /// Milliseconds since the registry was made: the clock of keep-alive.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks every live connection that has received nothing for 1.5 x its
    /// keep-alive to leave. Called every [`crate::limits::KEEP_ALIVE_SWEEP`]:
    /// one timer for all connections instead of one in each (a tokio `Sleep`
    /// is 112 bytes of every idle connection).
    pub fn expire_idle(&self) {
        let now = self.now_ms();
        self.each_live(|h| {
            let limit = u64::from(h.keep_alive_ms.load(Ordering::Relaxed));
            if limit != 0 && !h.paused.load(Ordering::Relaxed) && now.saturating_sub(h.last_rx_ms.load(Ordering::Relaxed)) >= limit {
                h.kick(Kick::KeepAlive);
            }
        });
    }

    /// Whether a will scheduled when `connection` ended should still go out:
    /// no newer connection has claimed the client id since.
    pub fn will_still_due(&self, client_id: &str, connection: u64) -> bool {
        self.lock(client_id).get(client_id).is_none_or(|e| e.last_connection <= connection)
    }
}

fn lock_shard(shard: &Mutex<HashMap<String, Entry>>) -> MutexGuard<'_, HashMap<String, Entry>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(r: &Registry, id: &str, connection: u64) -> Claim {
        match r.claim(id, connection, false) {
            ClaimResult::Claimed(c, _) => c,
            ClaimResult::Busy(_) => panic!("{id} is busy"),
        }
    }

    #[test]
    fn the_sweep_and_drain_reach_sessions_in_every_shard() {
        let r = Registry::default();
        // Enough ids that every shard holds some (64 shards, 2,000 ids).
        let claims: Vec<Claim> = (0..2000).map(|i| claimed(&r, &format!("c{i}"), i)).collect();
        for (i, c) in claims.iter().enumerate() {
            // Every other one has a keep-alive and has been silent past it.
            c.handover.set_keep_alive((i % 2 == 0).then_some(Duration::from_millis(1)));
        }
        std::thread::sleep(Duration::from_millis(5));
        r.expire_idle();
        for (i, c) in claims.iter().enumerate() {
            let want = (i % 2 == 0).then_some(Kick::KeepAlive);
            assert_eq!(c.handover.kick_reason(), want, "c{i}");
        }
        r.drain();
        assert!(claims.iter().all(|c| c.handover.kick_reason() == Some(Kick::Drain)));
    }

    #[test]
    fn a_second_claim_is_busy_until_release_then_gets_the_parked_session() {
        let r = Registry::default();
        let first = claimed(&r, "dev", 1);
        let ClaimResult::Busy(h) = r.claim("dev", 2, false) else { panic!("the id is held") };
        assert_eq!(h.kick_reason(), Some(Kick::TakenOver));
        let mut parked = SessionState::new();
        parked.persistent = true;
        r.release("dev", 1, Some(parked));
        drop(first);
        match r.claim("dev", 2, false) {
            ClaimResult::Claimed(_, Some(s)) => assert!(s.persistent),
            _ => panic!("the parked session goes to the next claim"),
        }
        assert!(!r.will_still_due("dev", 1), "a newer connection claimed the id");
    }
}
