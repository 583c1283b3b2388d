//! One consumer group of the classic protocol as a state machine, without
//! I/O or clocks: every call gets `now` (milliseconds on the coordinator's
//! clock) and the coordinator asks [`Group::next_deadline`] when to call
//! [`Group::tick`] next.
//!
//! States follow Kafka's `GroupMetadata`: Empty -> PreparingRebalance (a
//! member joined, left, died or changed its protocols; waits until every
//! known member rejoined or the rebalance timeout passed) ->
//! CompletingRebalance (join responses sent; the leader computes the
//! assignment) -> Stable (the leader's SyncGroup arrived; everyone got its
//! part). Dead is the state of a deleted group.
//!
//! JoinGroup and SyncGroup responses that must wait for the rebalance are
//! `oneshot` senders kept in the member; the handler awaits the receiver.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::code;
use super::limits::{MEMBERS_PER_GROUP_MAX, REBALANCE_TIMEOUT_MAX_MS, SESSION_TIMEOUT_MAX_MS, SESSION_TIMEOUT_MIN_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka uses in ListGroups / DescribeGroups.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup as the coordinator needs it (decoded by the handler).
#[derive(Debug, Clone, Default)]
pub(crate) struct JoinRequest {
    pub session_timeout_ms: i32,
    /// v0 has none: the handler passes the session timeout.
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: an unknown member first gets a member id with MEMBER_ID_REQUIRED.
    pub require_known_member: bool,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinMember>,
}

impl JoinResponse {
    pub(crate) fn error(error: i16, member_id: &str) -> JoinResponse {
        JoinResponse { error, generation: -1, member_id: member_id.to_owned(), ..JoinResponse::default() }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SyncRequest {
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// v5+: checked against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's (member id, assignment); empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub(crate) fn error(error: i16) -> SyncResponse {
        SyncResponse { error, ..SyncResponse::default() }
    }
}

/// An answer now, or one to wait for (the rebalance completes first).
pub(crate) enum Outcome<T> {
    Ready(T),
    Wait(oneshot::Receiver<T>),
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSummary {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Past this the member is dead unless it waits on a join or sync.
    session_deadline: u64,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    fn held_bytes(&self) -> usize {
        self.protocols.iter().map(|(n, m)| n.len() + m.len()).sum::<usize>() + self.assignment.len()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// A member waiting on a join or sync response is alive whatever its
    /// heartbeats say (clients do not heartbeat while they wait).
    fn alive(&self, now: u64) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some() || now < self.session_deadline
    }
}

/// Settings of every group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupSettings {
    pub initial_rebalance_delay_ms: u64,
}

/// The first rebalance of an empty group waits for more members (Kafka's
/// InitialDelayedJoin): each new member pushes the end out by the delay, up
/// to the rebalance timeout.
#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    end: u64,
    limit: u64,
}

pub(crate) struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order: the first is the leader when a new one is needed.
    members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until the deadline.
    pending: Vec<(String, u64)>,
    rebalance_deadline: Option<u64>,
    initial_delay: Option<InitialDelay>,
    settings: GroupSettings,
}

fn clamp_ms(v: i32, lo: u64, hi: u64) -> u64 {
    (v.max(0) as u64).clamp(lo, hi)
}

impl Group {
    pub(crate) fn new(id: &str, settings: GroupSettings) -> Group {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: Vec::new(),
            rebalance_deadline: None,
            initial_delay: None,
            settings,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn state(&self) -> GroupState {
        self.state
    }

    pub(crate) fn protocol_type(&self) -> &str {
        self.protocol_type.as_deref().unwrap_or("")
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Nothing left to remember: no members, no member ids handed out.
    pub(crate) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty() && matches!(self.state, GroupState::Empty | GroupState::Dead)
    }

    /// Bytes of protocol metadata and assignments held (the coordinator's budget).
    pub(crate) fn held_bytes(&self) -> usize {
        self.members.iter().map(Member::held_bytes).sum()
    }

    fn member_index(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// FENCED_INSTANCE_ID when `instance_id` belongs to a member other than `member_id`.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        let Some(instance) = instance_id else { return false };
        self.members.iter().any(|m| m.instance_id.as_deref() == Some(instance) && m.id != member_id)
    }

    /// The protocols every member supports (any, when there are no members).
    fn common_protocols<'a>(&'a self, with: &'a [(String, Bytes)]) -> impl Iterator<Item = &'a str> + 'a {
        with.iter().map(|(n, _)| n.as_str()).filter(|n| self.members.iter().all(|m| m.protocols.iter().any(|(p, _)| p == n)))
    }

    /// Whether a member with these protocols can be in this group.
    fn compatible(&self, protocol_type: &str, protocols: &[(String, Bytes)], ignoring: Option<&str>) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.iter().filter(|m| Some(m.id.as_str()) != ignoring).collect();
        if others.is_empty() {
            return true;
        }
        if others.iter().any(|m| m.protocol_type != protocol_type) {
            return false;
        }
        protocols.iter().any(|(n, _)| others.iter().all(|m| m.protocols.iter().any(|(p, _)| p == n)))
    }

    // ---- JoinGroup ----

    pub(crate) fn join(&mut self, req: JoinRequest, new_member_id: impl FnOnce() -> String, now: u64) -> Outcome<JoinResponse> {
        let ready = |error| Outcome::Ready(JoinResponse::error(error, &req.member_id));
        if self.state == GroupState::Dead {
            return ready(code::COORDINATOR_NOT_AVAILABLE);
        }
        let session = req.session_timeout_ms;
        if !(SESSION_TIMEOUT_MIN_MS as i64..=SESSION_TIMEOUT_MAX_MS as i64).contains(&i64::from(session)) {
            return ready(code::INVALID_SESSION_TIMEOUT);
        }
        let known = !req.member_id.is_empty();
        if !self.compatible(&req.protocol_type, &req.protocols, known.then_some(req.member_id.as_str())) {
            return ready(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if !known {
            return self.join_unknown(req, new_member_id, now);
        }
        if let Some(i) = self.pending.iter().position(|(id, _)| *id == req.member_id) {
            // The second JoinGroup of the v4 handshake.
            self.pending.swap_remove(i);
            return self.add_member(req.member_id.clone(), req, now);
        }
        if self.fenced(&req.member_id, req.instance_id.as_deref()) {
            return ready(code::FENCED_INSTANCE_ID);
        }
        let Some(i) = self.member_index(&req.member_id) else { return ready(code::UNKNOWN_MEMBER_ID) };
        self.rejoin(i, req, now)
    }

    fn join_unknown(&mut self, req: JoinRequest, new_member_id: impl FnOnce() -> String, now: u64) -> Outcome<JoinResponse> {
        let member_id = new_member_id();
        if let Some(instance) = req.instance_id.as_deref() {
            // A static member restarting: it takes over its old identity
            // (the old member id is fenced) without the handshake.
            if let Some(i) = self.members.iter().position(|m| m.instance_id.as_deref() == Some(instance)) {
                let old = &mut self.members[i];
                if let Some(w) = old.join_waiter.take() {
                    let _ = w.send(JoinResponse::error(code::FENCED_INSTANCE_ID, &old.id));
                }
                if let Some(w) = old.sync_waiter.take() {
                    let _ = w.send(SyncResponse::error(code::FENCED_INSTANCE_ID));
                }
                if self.leader.as_deref() == Some(old.id.as_str()) {
                    self.leader = Some(member_id.clone());
                }
                old.id = member_id.clone();
                let req = JoinRequest { member_id, ..req };
                return self.rejoin(i, req, now);
            }
            return self.add_member(member_id, req, now);
        }
        if req.require_known_member {
            if self.members.len() + self.pending.len() >= MEMBERS_PER_GROUP_MAX {
                return Outcome::Ready(JoinResponse::error(code::GROUP_MAX_SIZE_REACHED, ""));
            }
            self.pending.push((member_id.clone(), now + clamp_ms(req.session_timeout_ms, 0, SESSION_TIMEOUT_MAX_MS)));
            return Outcome::Ready(JoinResponse::error(code::MEMBER_ID_REQUIRED, &member_id));
        }
        self.add_member(member_id, req, now)
    }

    fn add_member(&mut self, member_id: String, req: JoinRequest, now: u64) -> Outcome<JoinResponse> {
        if self.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Outcome::Ready(JoinResponse::error(code::GROUP_MAX_SIZE_REACHED, &member_id));
        }
        let (tx, rx) = oneshot::channel();
        let session = clamp_ms(req.session_timeout_ms, SESSION_TIMEOUT_MIN_MS, SESSION_TIMEOUT_MAX_MS);
        self.members.push(Member {
            id: member_id,
            instance_id: req.instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout_ms: session,
            rebalance_timeout_ms: clamp_ms(req.rebalance_timeout_ms, session.min(REBALANCE_TIMEOUT_MAX_MS), REBALANCE_TIMEOUT_MAX_MS),
            protocol_type: req.protocol_type,
            protocols: req.protocols,
            assignment: Bytes::new(),
            session_deadline: now + session,
            join_waiter: Some(tx),
            sync_waiter: None,
        });
        if self.protocol_type.is_none() {
            self.protocol_type = Some(self.members[0].protocol_type.clone());
        }
        match self.state {
            GroupState::PreparingRebalance => {
                if let Some(d) = &mut self.initial_delay {
                    d.end = (now + self.settings.initial_rebalance_delay_ms).min(d.limit);
                }
                self.try_complete_join(now);
            }
            _ => self.prepare_rebalance(now),
        }
        Outcome::Wait(rx)
    }

    fn rejoin(&mut self, i: usize, req: JoinRequest, now: u64) -> Outcome<JoinResponse> {
        let m = &mut self.members[i];
        let changed = !m.same_protocols(&req.protocols);
        m.protocols = req.protocols;
        m.protocol_type = req.protocol_type;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.session_timeout_ms = clamp_ms(req.session_timeout_ms, SESSION_TIMEOUT_MIN_MS, SESSION_TIMEOUT_MAX_MS);
        m.rebalance_timeout_ms =
            clamp_ms(req.rebalance_timeout_ms, m.session_timeout_ms.min(REBALANCE_TIMEOUT_MAX_MS), REBALANCE_TIMEOUT_MAX_MS);
        m.session_deadline = now + m.session_timeout_ms;
        let is_leader = self.leader.as_deref() == Some(m.id.as_str());
        let id = m.id.clone();
        match self.state {
            GroupState::CompletingRebalance | GroupState::Stable if !(changed || is_leader && self.state == GroupState::Stable) => {
                // A repeated join (e.g. a lost response): same generation, no rebalance.
                Outcome::Ready(self.join_response(&id))
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                // A second join while one waits replaces it; the first
                // caller's connection is gone or will retry.
                self.members[i].join_waiter = Some(tx);
                if self.state == GroupState::PreparingRebalance {
                    self.try_complete_join(now);
                } else {
                    self.prepare_rebalance(now);
                }
                Outcome::Wait(rx)
            }
        }
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|m| JoinMember { member_id: m.id.clone(), instance_id: m.instance_id.clone(), metadata: m.metadata(&protocol) })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn prepare_rebalance(&mut self, now: u64) {
        if self.state == GroupState::CompletingRebalance {
            self.fail_sync_waiters(code::REBALANCE_IN_PROGRESS);
        }
        let rebalance_timeout = self.members.iter().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0);
        if self.state == GroupState::Empty && self.settings.initial_rebalance_delay_ms > 0 {
            let limit = now + rebalance_timeout.max(self.settings.initial_rebalance_delay_ms);
            self.initial_delay = Some(InitialDelay { end: (now + self.settings.initial_rebalance_delay_ms).min(limit), limit });
        }
        self.rebalance_deadline = Some(now + rebalance_timeout);
        self.state = GroupState::PreparingRebalance;
        self.try_complete_join(now);
    }

    fn fail_sync_waiters(&mut self, error: i16) {
        for m in &mut self.members {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResponse::error(error));
            }
        }
    }

    /// Completes the join phase once every member rejoined (and no member id
    /// handed out is still expected), unless the initial delay still runs.
    fn try_complete_join(&mut self, now: u64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if let Some(d) = self.initial_delay {
            if now < d.end {
                return;
            }
            self.initial_delay = None;
        }
        if self.members.iter().all(|m| m.join_waiter.is_some()) && self.pending.is_empty() {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: u64) {
        // Members that did not rejoin in time are out.
        self.members.retain(|m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        self.initial_delay = None;
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if self.leader.as_ref().is_none_or(|l| self.member_index(l).is_none()) {
            self.leader = Some(self.members[0].id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        for i in 0..self.members.len() {
            let response = self.join_response(&self.members[i].id);
            let m = &mut self.members[i];
            m.assignment = Bytes::new();
            m.session_deadline = now + m.session_timeout_ms;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(response);
            }
        }
    }

    /// Kafka's vote: every member votes for its most preferred protocol
    /// that all members support; most votes wins, ties go to the leader's
    /// (first member's) preference.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = self.common_protocols(&first.protocols).collect();
        let mut best: Option<(&str, usize)> = None;
        for c in &candidates {
            let votes = self
                .members
                .iter()
                .filter(|m| m.protocols.iter().map(|(n, _)| n.as_str()).find(|n| candidates.contains(n)) == Some(*c))
                .count();
            if best.is_none_or(|(_, v)| votes > v) {
                best = Some((c, votes));
            }
        }
        best.map(|(c, _)| c.to_owned())
    }

    // ---- SyncGroup ----

    pub(crate) fn sync(&mut self, req: SyncRequest, now: u64) -> Outcome<SyncResponse> {
        let ready = |e| Outcome::Ready(SyncResponse::error(e));
        if self.state == GroupState::Dead {
            return ready(code::COORDINATOR_NOT_AVAILABLE);
        }
        if self.fenced(&req.member_id, req.instance_id.as_deref()) {
            return ready(code::FENCED_INSTANCE_ID);
        }
        let Some(i) = self.member_index(&req.member_id) else { return ready(code::UNKNOWN_MEMBER_ID) };
        if req.generation != self.generation {
            return ready(code::ILLEGAL_GENERATION);
        }
        if req.protocol_type.as_ref().is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || req.protocol_name.as_ref().is_some_and(|p| Some(p) != self.protocol.as_ref())
        {
            return ready(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => ready(code::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => ready(code::REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let m = &mut self.members[i];
                m.session_deadline = now + m.session_timeout_ms;
                Outcome::Ready(self.sync_response(i))
            }
            GroupState::CompletingRebalance => {
                let m = &mut self.members[i];
                m.session_deadline = now + m.session_timeout_ms;
                if self.leader.as_deref() != Some(req.member_id.as_str()) {
                    // Followers wait for the leader's assignment.
                    let (tx, rx) = oneshot::channel();
                    self.members[i].sync_waiter = Some(tx);
                    return Outcome::Wait(rx);
                }
                for m in &mut self.members {
                    m.assignment = req.assignments.iter().find(|(id, _)| *id == m.id).map(|(_, a)| a.clone()).unwrap_or_default();
                }
                self.state = GroupState::Stable;
                for j in 0..self.members.len() {
                    let response = self.sync_response(j);
                    if let Some(w) = self.members[j].sync_waiter.take() {
                        let _ = w.send(response);
                    }
                }
                Outcome::Ready(self.sync_response(i))
            }
        }
    }

    fn sync_response(&self, i: usize) -> SyncResponse {
        SyncResponse {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self.members[i].assignment.clone(),
        }
    }

    // ---- Heartbeat, LeaveGroup, OffsetCommit checks ----

    pub(crate) fn heartbeat(&mut self, member_id: &str, instance_id: Option<&str>, generation: i32, now: u64) -> i16 {
        if self.state == GroupState::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        if self.fenced(member_id, instance_id) {
            return code::FENCED_INSTANCE_ID;
        }
        let Some(i) = self.member_index(member_id) else { return code::UNKNOWN_MEMBER_ID };
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        let m = &mut self.members[i];
        m.session_deadline = now + m.session_timeout_ms;
        match self.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            GroupState::Empty | GroupState::Dead => code::UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => code::NONE,
        }
    }

    /// One member of a LeaveGroup. An empty `member_id` with an instance id
    /// (v3+) names the static member.
    pub(crate) fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: u64) -> i16 {
        if self.state == GroupState::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        let i = match (member_id.is_empty(), instance_id) {
            (true, Some(instance)) => self.members.iter().position(|m| m.instance_id.as_deref() == Some(instance)),
            _ if self.fenced(member_id, instance_id) => return code::FENCED_INSTANCE_ID,
            _ => self.member_index(member_id),
        };
        let Some(i) = i else {
            if let Some(p) = self.pending.iter().position(|(id, _)| id == member_id) {
                self.pending.swap_remove(p);
                self.try_complete_join(now);
                return code::NONE;
            }
            return code::UNKNOWN_MEMBER_ID;
        };
        self.remove_member(i, now);
        code::NONE
    }

    fn remove_member(&mut self, i: usize, now: u64) {
        let m = self.members.remove(i);
        if let Some(w) = m.join_waiter {
            let _ = w.send(JoinResponse::error(code::UNKNOWN_MEMBER_ID, &m.id));
        }
        if let Some(w) = m.sync_waiter {
            let _ = w.send(SyncResponse::error(code::UNKNOWN_MEMBER_ID));
        }
        if self.leader.as_deref() == Some(m.id.as_str()) {
            self.leader = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// May this member commit offsets for this generation? (Kafka's rules:
    /// generation -1 is a simple consumer, allowed while the group has no
    /// members; commits during the join phase are allowed so members can
    /// commit before they give partitions up.)
    pub(crate) fn check_commit(&mut self, member_id: &str, instance_id: Option<&str>, generation: i32, now: u64) -> i16 {
        match self.state {
            GroupState::Dead => return code::COORDINATOR_NOT_AVAILABLE,
            GroupState::CompletingRebalance => return code::REBALANCE_IN_PROGRESS,
            GroupState::Empty if generation < 0 => return code::NONE,
            _ => {}
        }
        if self.fenced(member_id, instance_id) {
            return code::FENCED_INSTANCE_ID;
        }
        let Some(i) = self.member_index(member_id) else { return code::UNKNOWN_MEMBER_ID };
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        let m = &mut self.members[i];
        m.session_deadline = now + m.session_timeout_ms;
        code::NONE
    }

    /// Marks the group deleted: waiters are told the coordinator moved, so
    /// clients look it up again and start afresh.
    pub(crate) fn kill(&mut self) {
        for m in self.members.drain(..) {
            if let Some(w) = m.join_waiter {
                let _ = w.send(JoinResponse::error(code::COORDINATOR_NOT_AVAILABLE, &m.id));
            }
            if let Some(w) = m.sync_waiter {
                let _ = w.send(SyncResponse::error(code::COORDINATOR_NOT_AVAILABLE));
            }
        }
        self.pending.clear();
        self.state = GroupState::Dead;
    }

    // ---- time ----

    /// When [`Group::tick`] has something to do next.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let sessions = self.members.iter().filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none()).map(|m| m.session_deadline);
        let pending = self.pending.iter().map(|(_, d)| *d);
        let rebalance = match self.state {
            GroupState::PreparingRebalance => self.initial_delay.map(|d| d.end).or(self.rebalance_deadline),
            _ => None,
        };
        sessions.chain(pending).chain(rebalance).min()
    }

    /// Applies every deadline that has passed: expired member ids handed
    /// out, members whose session ran out, the end of the initial delay and
    /// the rebalance timeout (members that did not rejoin are removed).
    pub(crate) fn tick(&mut self, now: u64) {
        let pending_before = self.pending.len();
        self.pending.retain(|(_, d)| *d > now);
        while let Some(i) = self.members.iter().position(|m| !m.alive(now)) {
            self.remove_member(i, now);
        }
        if self.state == GroupState::PreparingRebalance {
            if self.rebalance_deadline.is_some_and(|d| d <= now) && self.initial_delay.is_none_or(|d| d.end <= now) {
                self.pending.clear();
                self.complete_join(now);
            } else if pending_before != self.pending.len() || self.initial_delay.is_some_and(|d| d.end <= now) {
                self.try_complete_join(now);
            }
        }
    }

    /// What DescribeGroups shows (metadata and assignments only when Stable,
    /// as Kafka does).
    pub(crate) fn summary(&self) -> GroupSummary {
        let stable = self.state == GroupState::Stable;
        let protocol = if stable { self.protocol.clone().unwrap_or_default() } else { String::new() };
        GroupSummary {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable { m.metadata(&protocol) } else { Bytes::new() },
                    assignment: if stable { m.assignment.clone() } else { Bytes::new() },
                })
                .collect(),
            protocol,
        }
    }
}
