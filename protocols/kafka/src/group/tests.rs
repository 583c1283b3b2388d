//! The coordinator without sockets: a manual clock and explicit ticks.

use std::sync::Arc;

use bytes::Bytes;
use polymq::clock::ManualClock;
use tokio::sync::oneshot;

use super::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn coordinator(delay_ms: u64) -> (Coordinator, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000));
    (Coordinator::new(GroupSettings { initial_rebalance_delay_ms: delay_ms }, clock.clone()), clock)
}

fn req(member_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        member_id: member_id.to_owned(),
        instance_id: None,
        protocol_type: "consumer".into(),
        protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{member_id}-{p}")))).collect(),
        require_known_member: true,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
    }
}

fn ready<T: std::fmt::Debug>(o: Outcome<T>) -> T {
    match o {
        Outcome::Ready(r) => r,
        Outcome::Wait(_) => panic!("expected an answer now"),
    }
}

fn waiting<T>(o: Outcome<T>) -> oneshot::Receiver<T> {
    match o {
        Outcome::Wait(rx) => rx,
        Outcome::Ready(_) => panic!("expected to wait"),
    }
}

fn answered<T>(rx: &mut oneshot::Receiver<T>) -> T {
    rx.try_recv().expect("answered by now")
}

/// The v4 handshake: MEMBER_ID_REQUIRED with an id, then the real join.
fn join_new(c: &Coordinator, group: &str, protocols: &[&str]) -> (String, oneshot::Receiver<JoinResponse>) {
    let first = ready(c.join(group, req("", protocols)));
    assert_eq!(first.error, code::MEMBER_ID_REQUIRED);
    assert!(!first.member_id.is_empty());
    let rx = waiting(c.join(group, req(&first.member_id, protocols)));
    (first.member_id, rx)
}

fn sync(c: &Coordinator, group: &str, member: &str, generation: i32, assignments: Vec<(String, Bytes)>) -> Outcome<SyncResponse> {
    c.sync(group, SyncRequest { generation, member_id: member.to_owned(), assignments, ..SyncRequest::default() })
}

fn state(c: &Coordinator, group: &str) -> GroupState {
    c.describe(group).map(|s| s.state).unwrap_or(GroupState::Dead)
}

#[test]
fn two_members_join_sync_and_rebalance_when_the_second_arrives() {
    let (c, _clock) = coordinator(0);
    let (a, mut rx_a) = join_new(&c, "g", &["range"]);
    let ja = answered(&mut rx_a);
    assert_eq!((ja.error, ja.generation, ja.leader.as_str()), (0, 1, a.as_str()));
    assert_eq!(ja.members.len(), 1, "the leader gets the members");
    let sa = ready(sync(&c, "g", &a, 1, vec![(a.clone(), Bytes::from("all"))]));
    assert_eq!(sa.assignment, Bytes::from("all"));
    assert_eq!(state(&c, "g"), GroupState::Stable);

    let (b, mut rx_b) = join_new(&c, "g", &["range"]);
    assert_eq!(state(&c, "g"), GroupState::PreparingRebalance);
    assert!(rx_b.try_recv().is_err(), "B waits for A to rejoin");
    assert_eq!(c.heartbeat("g", &a, None, 1), code::REBALANCE_IN_PROGRESS);
    let mut rx_a = waiting(c.join("g", req(&a, &["range"])));
    let (ja, jb) = (answered(&mut rx_a), answered(&mut rx_b));
    assert_eq!((ja.generation, jb.generation), (2, 2));
    assert_eq!(ja.leader, a);
    assert_eq!(jb.leader, a);
    assert_eq!(ja.members.len(), 2);
    assert!(jb.members.is_empty(), "followers get no member metadata");
    assert_eq!(ja.members[1].metadata, Bytes::from(format!("meta-{b}-range")));
    assert_eq!(ja.protocol_name.as_deref(), Some("range"));

    // The follower's sync waits for the leader's.
    let mut sb = waiting(sync(&c, "g", &b, 2, vec![]));
    assert_eq!(c.heartbeat("g", &b, None, 2), code::NONE, "heartbeats are fine while completing");
    let sa = ready(sync(&c, "g", &a, 2, vec![(a.clone(), Bytes::from("p0")), (b.clone(), Bytes::from("p1"))]));
    assert_eq!(sa.assignment, Bytes::from("p0"));
    assert_eq!(answered(&mut sb).assignment, Bytes::from("p1"));
    assert_eq!(state(&c, "g"), GroupState::Stable);
    let summary = c.describe("g").expect("live");
    assert_eq!(summary.members.len(), 2);
    assert_eq!(summary.protocol, "range");

    assert_eq!(c.heartbeat("g", &b, None, 1), code::ILLEGAL_GENERATION);
    assert_eq!(c.heartbeat("g", "nobody", None, 2), code::UNKNOWN_MEMBER_ID);
    assert_eq!(c.heartbeat("other", &b, None, 2), code::UNKNOWN_MEMBER_ID);
    assert_eq!(ready(sync(&c, "g", &b, 1, vec![])).error, code::ILLEGAL_GENERATION);

    // B leaves: A is told to rejoin and ends up alone in generation 3.
    assert_eq!(c.leave("g", &[(b.clone(), None)]), vec![code::NONE]);
    assert_eq!(c.heartbeat("g", &a, None, 2), code::REBALANCE_IN_PROGRESS);
    let mut rx_a = waiting(c.join("g", req(&a, &["range"])));
    assert_eq!(answered(&mut rx_a).generation, 3);
    assert_eq!(c.leave("g", &[(a.clone(), None), ("ghost".into(), None)]), vec![code::NONE, code::UNKNOWN_MEMBER_ID]);
    assert_eq!(c.group_count(), 0, "an empty group is forgotten");
}

#[test]
fn a_silent_member_is_removed_after_its_session_timeout() {
    let (c, clock) = coordinator(0);
    let (a, mut rx_a) = join_new(&c, "g", &["range"]);
    let (b, mut rx_b) = join_new(&c, "g", &["range"]);
    // A completed generation 1 alone; B's arrival started generation 2.
    assert_eq!(answered(&mut rx_a).generation, 1);
    let mut rx_a = waiting(c.join("g", req(&a, &["range"])));
    answered(&mut rx_a);
    answered(&mut rx_b);
    let mut sb = waiting(sync(&c, "g", &b, 2, vec![]));
    ready(sync(&c, "g", &a, 2, vec![]));
    answered(&mut sb);
    assert_eq!(state(&c, "g"), GroupState::Stable);

    clock.advance(6_000);
    assert!(c.tick(c.now_ms()).is_some());
    assert_eq!(c.heartbeat("g", &a, None, 2), code::NONE);
    clock.advance(6_000);
    c.tick(c.now_ms());
    assert_eq!(state(&c, "g"), GroupState::PreparingRebalance, "B's session ran out");
    assert_eq!(c.heartbeat("g", &b, None, 2), code::UNKNOWN_MEMBER_ID);
    assert_eq!(c.heartbeat("g", &a, None, 2), code::REBALANCE_IN_PROGRESS);
    let mut rx_a = waiting(c.join("g", req(&a, &["range"])));
    let ja = answered(&mut rx_a);
    assert_eq!((ja.generation, ja.members.len()), (3, 1));
}

#[test]
fn members_that_do_not_rejoin_within_the_rebalance_timeout_are_dropped() {
    let (c, clock) = coordinator(0);
    let (a, mut rx_a) = join_new(&c, "g", &["range"]);
    answered(&mut rx_a);
    ready(sync(&c, "g", &a, 1, vec![]));
    let (_b, mut rx_b) = join_new(&c, "g", &["range"]);
    // A keeps heartbeating (so its session stays alive) but never rejoins.
    for _ in 0..3 {
        clock.advance(9_000);
        assert_eq!(c.heartbeat("g", &a, None, 1), code::REBALANCE_IN_PROGRESS);
        c.tick(c.now_ms());
    }
    assert!(rx_b.try_recv().is_err());
    clock.advance(3_001);
    c.tick(c.now_ms());
    let jb = answered(&mut rx_b);
    assert_eq!((jb.error, jb.generation, jb.members.len()), (0, 2, 1), "B leads alone");
    assert_eq!(c.heartbeat("g", &a, None, 1), code::UNKNOWN_MEMBER_ID);
}

#[test]
fn the_initial_delay_gathers_members_into_one_first_generation() {
    let (c, clock) = coordinator(3_000);
    let (_a, mut rx_a) = join_new(&c, "g", &["range"]);
    clock.advance(1_000);
    c.tick(c.now_ms());
    let (_b, mut rx_b) = join_new(&c, "g", &["range"]);
    clock.advance(2_999);
    c.tick(c.now_ms());
    assert!(rx_a.try_recv().is_err(), "B's arrival pushed the end out");
    clock.advance(1);
    assert!(c.tick(c.now_ms()).is_some(), "session deadlines remain");
    let (ja, jb) = (answered(&mut rx_a), answered(&mut rx_b));
    assert_eq!((ja.generation, jb.generation), (1, 1));
    assert_eq!(ja.members.len(), 2);
}

#[test]
fn the_protocol_is_chosen_by_vote_and_incompatible_members_are_refused() {
    let (c, _clock) = coordinator(0);
    let (a, mut rx_a) = join_new(&c, "g", &["range", "roundrobin"]);
    answered(&mut rx_a);
    let (_b, mut rx_b) = join_new(&c, "g", &["roundrobin", "range"]);
    let (_c2, mut rx_c) = join_new(&c, "g", &["roundrobin"]);
    let mut rx_a = waiting(c.join("g", req(&a, &["range", "roundrobin"])));
    for rx in [&mut rx_a, &mut rx_b, &mut rx_c] {
        assert_eq!(answered(rx).protocol_name.as_deref(), Some("roundrobin"));
    }
    let refused = ready(c.join("g", req("", &["sticky"])));
    assert_eq!(refused.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let mut other_type = req("", &["roundrobin"]);
    other_type.protocol_type = "connect".into();
    assert_eq!(ready(c.join("g", other_type)).error, code::INCONSISTENT_GROUP_PROTOCOL);
    let mut short = req("", &["roundrobin"]);
    short.session_timeout_ms = 10;
    assert_eq!(ready(c.join("g", short)).error, code::INVALID_SESSION_TIMEOUT);
    assert_eq!(ready(c.join("", req("", &["x"]))).error, code::INVALID_GROUP_ID);
}

#[test]
fn commits_follow_kafkas_generation_rules() {
    let (c, _clock) = coordinator(0);
    assert_eq!(c.check_commit("simple", "", None, -1), code::NONE, "simple consumers commit");
    assert_eq!(c.check_commit("simple", "m", None, 4), code::ILLEGAL_GENERATION, "a gone generation");
    let (a, mut rx_a) = join_new(&c, "g", &["range"]);
    answered(&mut rx_a);
    assert_eq!(c.check_commit("g", &a, None, 1), code::REBALANCE_IN_PROGRESS, "completing");
    ready(sync(&c, "g", &a, 1, vec![]));
    assert_eq!(c.check_commit("g", &a, None, 1), code::NONE);
    assert_eq!(c.check_commit("g", &a, None, 0), code::ILLEGAL_GENERATION);
    assert_eq!(c.check_commit("g", "x", None, 1), code::UNKNOWN_MEMBER_ID);
    assert_eq!(c.check_commit("g", "", None, -1), code::UNKNOWN_MEMBER_ID, "not while the group has members");
    let (_b, _rx_b) = join_new(&c, "g", &["range"]);
    assert_eq!(c.check_commit("g", &a, None, 1), code::NONE, "commit before rejoining is allowed");
}

#[test]
fn a_static_member_rejoining_fences_its_old_id() {
    let (c, _clock) = coordinator(0);
    let mut r = req("", &["range"]);
    r.instance_id = Some("i1".into());
    let mut rx = waiting(c.join("g", r.clone()));
    let first = answered(&mut rx);
    assert_eq!(first.error, 0, "static members skip the member id handshake");
    ready(sync(&c, "g", &first.member_id, 1, vec![(first.member_id.clone(), Bytes::from("a"))]));
    let mut rx = waiting(c.join("g", r.clone()));
    let second = answered(&mut rx);
    assert_ne!(second.member_id, first.member_id);
    assert_eq!(second.leader, second.member_id);
    assert_eq!(c.heartbeat("g", &first.member_id, Some("i1"), second.generation), code::FENCED_INSTANCE_ID);
    assert_eq!(c.leave("g", &[(String::new(), Some("i1".into()))]), vec![code::NONE]);
    assert_eq!(c.group_count(), 0);
}

#[test]
fn delete_refuses_groups_with_members() {
    let (c, _clock) = coordinator(0);
    let (a, mut rx_a) = join_new(&c, "g", &["range"]);
    answered(&mut rx_a);
    assert_eq!(c.delete("g"), code::NON_EMPTY_GROUP);
    c.leave("g", &[(a, None)]);
    assert_eq!(c.delete("g"), code::NONE);
    assert!(c.list().is_empty());
}

#[test]
fn an_unanswered_member_id_expires_and_limits_hold() {
    let (c, clock) = coordinator(0);
    let first = ready(c.join("g", req("", &["range"])));
    assert_eq!(first.error, code::MEMBER_ID_REQUIRED);
    assert_eq!(c.list().len(), 1);
    clock.advance(SESSION as u64);
    assert_eq!(c.tick(c.now_ms()), None);
    assert!(c.list().is_empty(), "the handed-out id expired");
    let many: Vec<String> = (0..limits::PROTOCOLS_PER_MEMBER_MAX + 1).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(ready(c.join("g", req("", &refs))).error, code::INVALID_REQUEST);
    let mut big = req("", &["range"]);
    big.protocols[0].1 = Bytes::from(vec![0u8; limits::MEMBER_BYTES_MAX + 1]);
    assert_eq!(ready(c.join("g", big)).error, code::INVALID_REQUEST);
}
