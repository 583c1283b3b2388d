//! Consumer groups over real sockets: hand-built requests (kafka-protocol's
//! client side) against an in-process polymq.

mod kafka_common;

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use kafka_common::{Client, TestBroker};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use polymq::queue::QueueOptions;
use polymq_kafka::KafkaConfig;

const JOIN_V: i16 = 5;
const SYNC_V: i16 = 3;
const HB_V: i16 = 3;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_owned())
}

async fn broker() -> Result<TestBroker> {
    TestBroker::start_with(KafkaConfig { group_initial_rebalance_delay_ms: 0, ..KafkaConfig::default() }).await
}

async fn topic(b: &TestBroker, name: &str, partitions: u32) -> Result<()> {
    for p in 0..partitions {
        b.store().declare_queue(&polymq::topic::partition_queue(name, p), QueueOptions::stream()).await?;
    }
    Ok(())
}

fn join_req(group: &str, member: &str, session_ms: i32) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(s("range")).with_metadata(Bytes::from(format!("sub-{member}")))])
}

/// The v4+ handshake, then the real join (which may wait for a rebalance).
async fn join(c: &mut Client, group: &str, session_ms: i32) -> Result<JoinGroupResponse> {
    let first = c.send(&join_req(group, "", session_ms), JOIN_V).await?;
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED first");
    rejoin(c, group, &first.member_id, session_ms).await
}

async fn rejoin(c: &mut Client, group: &str, member: &str, session_ms: i32) -> Result<JoinGroupResponse> {
    let r = c.send(&join_req(group, member, session_ms), JOIN_V).await?;
    assert_eq!(r.error_code, 0);
    Ok(r)
}

async fn sync(c: &mut Client, group: &str, member: &str, generation: i32, assignments: &[(&str, &str)]) -> Result<SyncGroupResponse> {
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| SyncGroupRequestAssignment::default().with_member_id(s(m)).with_assignment(Bytes::from(a.to_string())))
                .collect(),
        );
    c.send(&req, SYNC_V).await
}

async fn heartbeat(c: &mut Client, group: &str, member: &str, generation: i32) -> Result<i16> {
    let req = HeartbeatRequest::default().with_group_id(GroupId(s(group))).with_generation_id(generation).with_member_id(s(member));
    Ok(c.send(&req, HB_V).await?.error_code)
}

#[tokio::test]
async fn two_members_join_sync_heartbeat_and_leave() -> Result<()> {
    let b = broker().await?;
    let mut a = b.client().await?;
    let fc = a.send(&FindCoordinatorRequest::default().with_key(s("g")), 2).await?;
    assert_eq!((fc.error_code, fc.node_id.0, fc.port), (0, 0, i32::from(b.addr().port())));

    let ja = join(&mut a, "g", 10_000).await?;
    assert_eq!((ja.generation_id, ja.leader.as_str()), (1, ja.member_id.as_str()));
    let a_id = ja.member_id.to_string();
    let sa = sync(&mut a, "g", &a_id, 1, &[(&a_id, "all")]).await?;
    assert_eq!(sa.assignment, Bytes::from("all"));

    // B's join waits until A rejoins.
    let addr = b.addr();
    let b_join = tokio::spawn(async move {
        let mut c = Client::connect(addr).await?;
        let j = join(&mut c, "g", 10_000).await?;
        anyhow::Ok((c, j))
    });
    let mut seen = 0;
    while heartbeat(&mut a, "g", &a_id, 1).await? != 27 {
        seen += 1;
        assert!(seen < 100, "A never saw the rebalance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ja = rejoin(&mut a, "g", &a_id, 10_000).await?;
    let (mut bc, jb) = b_join.await??;
    let b_id = jb.member_id.to_string();
    assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
    assert_eq!(ja.members.len(), 2, "the leader sees both members");
    assert!(jb.members.is_empty());
    assert_eq!(jb.leader.as_str(), a_id);

    let b_sync = tokio::spawn(async move {
        let r = sync(&mut bc, "g", &b_id, 2, &[]).await;
        (bc, b_id, r)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sa = sync(&mut a, "g", &a_id, 2, &[(&a_id, "p0"), (&jb.member_id, "p1")]).await?;
    assert_eq!(sa.assignment, Bytes::from("p0"));
    let (mut bc, b_id, sb) = b_sync.await?;
    assert_eq!(sb?.assignment, Bytes::from("p1"), "the follower gets the leader's assignment");
    assert_eq!(heartbeat(&mut bc, "g", &b_id, 2).await?, 0);
    assert_eq!(heartbeat(&mut bc, "g", &b_id, 1).await?, 22, "ILLEGAL_GENERATION");
    assert_eq!(heartbeat(&mut bc, "g", "ghost", 2).await?, 25, "UNKNOWN_MEMBER_ID");

    // B leaves (v3 batch): A is asked to rejoin and leads alone.
    let leave =
        LeaveGroupRequest::default().with_group_id(GroupId(s("g"))).with_members(vec![MemberIdentity::default().with_member_id(s(&b_id))]);
    let lr = bc.send(&leave, 3).await?;
    assert_eq!(lr.members.len(), 1);
    assert_eq!(lr.members[0].error_code, 0);
    assert_eq!(heartbeat(&mut a, "g", &a_id, 2).await?, 27);
    let ja = rejoin(&mut a, "g", &a_id, 10_000).await?;
    assert_eq!((ja.generation_id, ja.members.len()), (3, 1));
    Ok(())
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_removed() -> Result<()> {
    let b = broker().await?;
    let (mut a, mut c) = (b.client().await?, b.client().await?);
    let ja = join(&mut a, "g", 1_000).await?;
    let a_id = ja.member_id.to_string();
    sync(&mut a, "g", &a_id, 1, &[]).await?;
    let addr = b.addr();
    let c_join = tokio::spawn(async move {
        let j = join(&mut c, "g", 1_000).await;
        (c, j)
    });
    while heartbeat(&mut a, "g", &a_id, 1).await? != 27 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rejoin(&mut a, "g", &a_id, 1_000).await?;
    let (mut c, jc) = c_join.await?;
    let c_id = jc?.member_id.to_string();
    let c_sync = tokio::spawn(async move { sync(&mut c, "g", &c_id, 2, &[]).await.map(|r| (c, c_id, r)) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sync(&mut a, "g", &a_id, 2, &[]).await?;
    let (_c, c_id, _) = c_sync.await??;
    // C goes silent; A keeps heartbeating and is told to rebalance once
    // C's 1 s session has run out.
    let started = std::time::Instant::now();
    loop {
        let e = heartbeat(&mut a, "g", &a_id, 2).await?;
        if e == 27 {
            break;
        }
        assert_eq!(e, 0);
        assert!(started.elapsed() < Duration::from_secs(10), "C never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(700), "not before the session timeout");
    let ja = rejoin(&mut a, "g", &a_id, 1_000).await?;
    assert_eq!((ja.generation_id, ja.members.len()), (3, 1));
    let mut other = Client::connect(addr).await?;
    assert_eq!(heartbeat(&mut other, "g", &c_id, 2).await?, 25);
    Ok(())
}

fn commit_req(group: &str, generation: i32, member: &str, offsets: &[(&str, i32, i64)]) -> OffsetCommitRequest {
    let topics = offsets
        .iter()
        .map(|(t, p, o)| {
            OffsetCommitRequestTopic::default().with_name(TopicName(s(t))).with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_metadata(Some(s("")))])
        })
        .collect();
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(topics)
}

async fn fetch_all(c: &mut Client, group: &str) -> Result<Vec<(String, i32, i64)>> {
    let req = OffsetFetchRequest::default()
        .with_groups(vec![OffsetFetchRequestGroup::default().with_group_id(GroupId(s(group))).with_topics(None)]);
    let r = c.send(&req, 8).await?;
    let mut out = Vec::new();
    for t in &r.groups[0].topics {
        for p in &t.partitions {
            out.push((t.name.0.to_string(), p.partition_index, p.committed_offset));
        }
    }
    Ok(out)
}

#[tokio::test]
async fn committed_offsets_survive_a_restart() -> Result<()> {
    let mut b = broker().await?;
    topic(&b, "t", 2).await?;
    let mut c = b.client().await?;
    let r = c.send(&commit_req("simple", -1, "", &[("t", 0, 5), ("t", 1, 7), ("nope", 0, 1)]), 7).await?;
    let errors: Vec<i16> = r.topics.iter().map(|t| t.partitions[0].error_code).collect();
    assert_eq!(errors, vec![0, 0, 3], "unknown topic: UNKNOWN_TOPIC_OR_PARTITION");
    let r = c.send(&commit_req("simple", 4, "m", &[("t", 0, 9)]), 7).await?;
    assert_eq!(r.topics[0].partitions[0].error_code, 22, "a generation of no live group");

    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("simple")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default().with_name(TopicName(s("t"))).with_partition_indexes(vec![0, 1, 9])]));
    let r = c.send(&fetch, 5).await?;
    let got: Vec<i64> = r.topics[0].partitions.iter().map(|p| p.committed_offset).collect();
    assert_eq!(got, vec![5, 7, -1]);

    b.restart().await?;
    let mut c = b.client().await?;
    assert_eq!(fetch_all(&mut c, "simple").await?, vec![("t".into(), 0, 5), ("t".into(), 1, 7)]);
    let r = c.send(&fetch, 1).await?;
    let got: Vec<i64> = r.topics[0].partitions.iter().map(|p| p.committed_offset).collect();
    assert_eq!(got, vec![5, 7, -1], "v1 too");
    Ok(())
}

#[tokio::test]
async fn list_describe_and_delete_groups() -> Result<()> {
    let b = broker().await?;
    topic(&b, "t", 1).await?;
    let mut a = b.client().await?;
    let ja = join(&mut a, "live", 10_000).await?;
    let a_id = ja.member_id.to_string();
    sync(&mut a, "live", &a_id, 1, &[(&a_id, "x")]).await?;
    let r = a.send(&commit_req("live", 1, &a_id, &[("t", 0, 3)]), 8).await?;
    assert_eq!(r.topics[0].partitions[0].error_code, 0, "a member commits in its generation");
    a.send(&commit_req("offsets-only", -1, "", &[("t", 0, 1)]), 8).await?;

    let list = a.send(&ListGroupsRequest::default(), 4).await?;
    let listed: Vec<(String, String, String)> =
        list.groups.iter().map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string(), g.group_state.to_string())).collect();
    assert_eq!(listed, vec![("live".into(), "consumer".into(), "Stable".into()), ("offsets-only".into(), String::new(), "Empty".into())]);
    let stable = a.send(&ListGroupsRequest::default().with_states_filter(vec![s("stable")]), 4).await?;
    assert_eq!(stable.groups.len(), 1);

    let d = a.send(&DescribeGroupsRequest::default().with_groups(vec![GroupId(s("live")), GroupId(s("nobody"))]), 5).await?;
    assert_eq!(d.groups[0].group_state.as_str(), "Stable");
    assert_eq!(d.groups[0].protocol_data.as_str(), "range");
    assert_eq!(d.groups[0].members.len(), 1);
    assert_eq!(d.groups[0].members[0].member_assignment, Bytes::from("x"));
    assert_eq!(d.groups[0].authorized_operations, i32::MIN, "INT32_MIN when not asked for");
    assert_eq!(d.groups[1].group_state.as_str(), "Dead");

    let del = |names: &[&str]| DeleteGroupsRequest::default().with_groups_names(names.iter().map(|n| GroupId(s(n))).collect());
    let r = a.send(&del(&["live"]), 2).await?;
    assert_eq!(r.results[0].error_code, 68, "NON_EMPTY_GROUP");
    let leave = LeaveGroupRequest::default().with_group_id(GroupId(s("live"))).with_member_id(s(&a_id));
    assert_eq!(a.send(&leave, 1).await?.error_code, 0);
    let d = a.send(&DescribeGroupsRequest::default().with_groups(vec![GroupId(s("live"))]), 0).await?;
    assert_eq!(d.groups[0].group_state.as_str(), "Empty", "offsets keep the group listed");
    let r = a.send(&del(&["live", "offsets-only", "never"]), 1).await?;
    let errors: Vec<i16> = r.results.iter().map(|r| r.error_code).collect();
    assert_eq!(errors, vec![0, 0, 69]);
    assert!(a.send(&ListGroupsRequest::default(), 3).await?.groups.is_empty());
    assert!(fetch_all(&mut a, "live").await?.is_empty(), "deleting a group deletes its offsets");
    Ok(())
}
