//! Consumer groups of the classic protocol: the group coordinator.
//!
//! [`state::Group`] is one group's state machine, pure (time is an
//! argument). [`Coordinator`] owns every live group behind one short mutex
//! (never held across an `.await`), keeps one ordered timer set of the
//! groups' next deadlines, and runs ONE tokio task that sleeps until the
//! earliest of them — no task or timer per group, no polling.
//!
//! Only groups with members (or member ids handed out) live in memory; an
//! empty group is forgotten and exists from then on only through its
//! committed offsets in the core (`kafka/<group>`), which is what ListGroups
//! and DescribeGroups then show (state Empty).

#[cfg(test)]
mod decode_tests;
pub(crate) mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use polymq::clock::Clock;
use tokio::sync::Notify;
use tokio::time::Instant;

use state::Group;
pub(crate) use state::{GroupSettings, GroupState, GroupSummary, JoinRequest, JoinResponse, Outcome, SyncRequest, SyncResponse};

/// Limits of the coordinator (documented in docs/design-kafka.md).
pub(crate) mod limits {
    /// Groups with members held in memory; past it a JoinGroup for a new
    /// group gets COORDINATOR_NOT_AVAILABLE (clients retry).
    pub const GROUPS_MAX: usize = 10_000;
    /// Members (and member ids handed out) per group: GROUP_MAX_SIZE_REACHED past it.
    pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;
    /// Protocols one member may offer.
    pub const PROTOCOLS_PER_MEMBER_MAX: usize = 32;
    /// A member's protocol names and metadata together, and one assignment.
    pub const MEMBER_BYTES_MAX: usize = 1024 * 1024;
    /// Metadata and assignments held by all groups together.
    pub const HELD_BYTES_MAX: usize = 256 * 1024 * 1024;
    /// Kafka's `group.max.session.timeout.ms` default (30 minutes).
    pub const SESSION_TIMEOUT_MAX_MS: u64 = 30 * 60 * 1000;
    /// Kafka's `group.min.session.timeout.ms` is 6 s; 1 s lets tests expire
    /// sessions quickly and costs nothing.
    pub const SESSION_TIMEOUT_MIN_MS: u64 = 1_000;
    /// Longer rebalance timeouts (`max.poll.interval.ms` can be days) are cut
    /// to this: a member that has not rejoined in an hour is gone.
    pub const REBALANCE_TIMEOUT_MAX_MS: u64 = 60 * 60 * 1000;
    /// Longest group id (Kafka has none; ours becomes a core group name).
    pub const GROUP_ID_BYTES_MAX: usize = 1024;
    /// Longest member id prefix taken from the client id.
    pub const CLIENT_ID_IN_MEMBER_ID_MAX: usize = 64;
    const _: () = assert!(SESSION_TIMEOUT_MIN_MS <= SESSION_TIMEOUT_MAX_MS);
    const _: () = assert!(MEMBER_BYTES_MAX * 2 <= HELD_BYTES_MAX);
}

/// The Kafka error codes the coordinator answers with.
pub(crate) mod code {
    pub const NONE: i16 = 0;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_REQUEST: i16 = 42;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
}

/// The core group name under which a Kafka group's offsets are committed.
pub(crate) fn core_group(group_id: &str) -> String {
    format!("{CORE_GROUP_PREFIX}{group_id}")
}

/// What every Kafka group's core group name starts with.
pub(crate) const CORE_GROUP_PREFIX: &str = "kafka/";

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

struct Inner {
    groups: HashMap<String, Group>,
    /// (deadline, group id): the next time each group needs a tick.
    timers: BTreeSet<(u64, String)>,
    scheduled: HashMap<String, u64>,
    held_bytes: usize,
    held_by: HashMap<String, usize>,
}

pub(crate) struct Coordinator {
    inner: Mutex<Inner>,
    wake: Arc<Notify>,
    settings: GroupSettings,
    clock: Arc<dyn Clock>,
    /// Member ids: `<client id>-<nonce><counter>`, unique across restarts
    /// because the nonce is the start time.
    nonce: u64,
    next_member: AtomicU64,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // The timer task sees the coordinator gone and ends.
        self.wake.notify_one();
    }
}

impl Coordinator {
    /// A coordinator and its timer task (needs a tokio runtime).
    pub(crate) fn start(settings: GroupSettings) -> Arc<Coordinator> {
        let c = Arc::new(Coordinator::new(settings, Arc::new(TokioClock(Instant::now()))));
        let weak = Arc::downgrade(&c);
        let wake = Arc::clone(&c.wake);
        tokio::spawn(run_timers(weak, wake));
        c
    }

    /// Without the timer task: tests call [`Coordinator::tick`] themselves.
    pub(crate) fn new(settings: GroupSettings, clock: Arc<dyn Clock>) -> Coordinator {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        Coordinator {
            inner: Mutex::new(Inner {
                groups: HashMap::new(),
                timers: BTreeSet::new(),
                scheduled: HashMap::new(),
                held_bytes: 0,
                held_by: HashMap::new(),
            }),
            wake: Arc::new(Notify::new()),
            settings,
            clock,
            nonce,
            next_member: AtomicU64::new(0),
        }
    }

    /// Milliseconds on the coordinator's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock left group state half-changed; the
        // groups are soft state (clients rejoin), so carry on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let mut end = client_id.len().min(limits::CLIENT_ID_IN_MEMBER_ID_MAX);
        while !client_id.is_char_boundary(end) {
            end -= 1;
        }
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:x}-{n:x}", &client_id[..end], self.nonce)
    }

    /// After a group changed: reschedule its timer, account its bytes, and
    /// forget it once idle.
    fn settle(&self, inner: &mut Inner, group_id: &str) {
        let (deadline, idle, bytes) = match inner.groups.get(group_id) {
            Some(g) => (g.next_deadline(), g.is_idle(), g.held_bytes()),
            None => (None, true, 0),
        };
        if let Some(old) = inner.scheduled.remove(group_id) {
            inner.timers.remove(&(old, group_id.to_owned()));
        }
        let old_bytes = inner.held_by.remove(group_id).unwrap_or(0);
        inner.held_bytes -= old_bytes;
        if idle {
            inner.groups.remove(group_id);
            return;
        }
        inner.held_bytes += bytes;
        inner.held_by.insert(group_id.to_owned(), bytes);
        if let Some(d) = deadline {
            let earliest = inner.timers.first().map(|(t, _)| *t);
            inner.timers.insert((d, group_id.to_owned()));
            inner.scheduled.insert(group_id.to_owned(), d);
            if earliest.is_none_or(|e| d < e) {
                self.wake.notify_one();
            }
        }
    }

    pub(crate) fn join(&self, group_id: &str, req: JoinRequest) -> Outcome<JoinResponse> {
        let now = self.now_ms();
        let member_id = req.member_id.clone();
        let refuse = |e| Outcome::Ready(JoinResponse::error(e, &member_id));
        if group_id.is_empty() || group_id.len() > limits::GROUP_ID_BYTES_MAX {
            return refuse(code::INVALID_GROUP_ID);
        }
        let bytes: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if req.protocols.len() > limits::PROTOCOLS_PER_MEMBER_MAX || bytes > limits::MEMBER_BYTES_MAX {
            return refuse(code::INVALID_REQUEST);
        }
        let mut inner = self.lock();
        if inner.held_bytes + bytes > limits::HELD_BYTES_MAX {
            return refuse(code::GROUP_MAX_SIZE_REACHED);
        }
        if !inner.groups.contains_key(group_id) {
            if inner.groups.len() >= limits::GROUPS_MAX {
                return refuse(code::COORDINATOR_NOT_AVAILABLE);
            }
            inner.groups.insert(group_id.to_owned(), Group::new(group_id, self.settings));
        }
        let client_id = req.client_id.clone();
        let group = inner.groups.get_mut(group_id).expect("inserted above");
        let outcome = group.join(req, || self.new_member_id(&client_id), now);
        self.settle(&mut inner, group_id);
        outcome
    }

    pub(crate) fn sync(&self, group_id: &str, req: SyncRequest) -> Outcome<SyncResponse> {
        let now = self.now_ms();
        if req.assignments.iter().any(|(_, a)| a.len() > limits::MEMBER_BYTES_MAX) {
            return Outcome::Ready(SyncResponse::error(code::INVALID_REQUEST));
        }
        let mut inner = self.lock();
        let assigned: usize = req.assignments.iter().map(|(_, a)| a.len()).sum();
        if inner.held_bytes + assigned > limits::HELD_BYTES_MAX {
            return Outcome::Ready(SyncResponse::error(code::GROUP_MAX_SIZE_REACHED));
        }
        let Some(group) = inner.groups.get_mut(group_id) else { return Outcome::Ready(SyncResponse::error(code::UNKNOWN_MEMBER_ID)) };
        let outcome = group.sync(req, now);
        self.settle(&mut inner, group_id);
        outcome
    }

    pub(crate) fn heartbeat(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        let now = self.now_ms();
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else { return code::UNKNOWN_MEMBER_ID };
        let error = group.heartbeat(member_id, instance_id, generation, now);
        self.settle(&mut inner, group_id);
        error
    }

    /// Removes each (member id, instance id); one error code per member.
    pub(crate) fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let now = self.now_ms();
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else { return vec![code::UNKNOWN_MEMBER_ID; members.len()] };
        let errors = members.iter().map(|(m, i)| group.leave(m, i.as_deref(), now)).collect();
        self.settle(&mut inner, group_id);
        errors
    }

    /// Whether an OffsetCommit from this member and generation is accepted.
    pub(crate) fn check_commit(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        let now = self.now_ms();
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else {
            // No live group: only a simple consumer (generation -1) commits;
            // anything else is from a generation that is gone.
            return if generation < 0 { code::NONE } else { code::ILLEGAL_GENERATION };
        };
        let error = group.check_commit(member_id, instance_id, generation, now);
        self.settle(&mut inner, group_id);
        error
    }

    /// Live groups, sorted by id.
    pub(crate) fn list(&self) -> Vec<Listed> {
        let inner = self.lock();
        let mut out: Vec<Listed> = inner
            .groups
            .values()
            .map(|g| Listed { group_id: g.id().to_owned(), protocol_type: g.protocol_type().to_owned(), state: g.state() })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    pub(crate) fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        self.lock().groups.get(group_id).map(Group::summary)
    }

    /// Forgets a group without members (DeleteGroups); NON_EMPTY_GROUP if it has some.
    pub(crate) fn delete(&self, group_id: &str) -> i16 {
        let mut inner = self.lock();
        let Some(group) = inner.groups.get_mut(group_id) else { return code::NONE };
        if group.member_count() > 0 {
            return code::NON_EMPTY_GROUP;
        }
        group.kill();
        self.settle(&mut inner, group_id);
        code::NONE
    }

    /// Applies every deadline up to `now`; returns the next one.
    pub(crate) fn tick(&self, now: u64) -> Option<u64> {
        let mut inner = self.lock();
        while let Some((at, id)) = inner.timers.first().cloned() {
            if at > now {
                return Some(at);
            }
            inner.timers.pop_first();
            inner.scheduled.remove(&id);
            if let Some(g) = inner.groups.get_mut(&id) {
                g.tick(now);
            }
            self.settle(&mut inner, &id);
        }
        None
    }

    #[cfg(test)]
    fn group_count(&self) -> usize {
        self.lock().groups.len()
    }
}

/// Milliseconds since the coordinator started, on tokio's clock (so tests
/// with paused time drive it too).
struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// The one timer task: sleeps until the earliest group deadline or until a
/// change schedules an earlier one.
async fn run_timers(coordinator: Weak<Coordinator>, wake: Arc<Notify>) {
    loop {
        let (next, now) = {
            let Some(c) = coordinator.upgrade() else { return };
            let now = c.now_ms();
            (c.tick(now), now)
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(at.saturating_sub(now))) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
