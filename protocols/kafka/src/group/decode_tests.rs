//! Each group API decoder against kafka-protocol's client-side encoder, at
//! every version we advertise; and arbitrary bytes never panic a decoder.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;

use crate::api::{self, delete_groups, describe_groups, find_coordinator, heartbeat, join_group, leave_group, list_groups};
use crate::api::{offset_commit, offset_fetch, sync_group};
use crate::wire::Reader;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_owned())
}

fn versions(key: ApiKey) -> (std::ops::RangeInclusive<i16>, ApiKey) {
    let api = api::lookup(key as i16).expect("registered");
    (api.min_version..=api.max_version, key)
}

/// Encodes `req` at `v`; returns the reader and the version's flexible flag.
fn encoded<T: Encodable>(key: ApiKey, req: &T, v: i16) -> (Reader, bool) {
    let mut buf = BytesMut::new();
    req.encode(&mut buf, v).unwrap_or_else(|e| panic!("{key:?} v{v} encodes: {e}"));
    (Reader::new(buf.freeze()), key.request_header_version(v) >= 2)
}

#[test]
fn find_coordinator_every_version() {
    let (range, key) = versions(ApiKey::FindCoordinator);
    for v in range {
        let mut req = FindCoordinatorRequest::default();
        if v <= 3 {
            req.key = s("g1");
        } else {
            req.coordinator_keys = vec![s("g1"), s("g2")];
        }
        if v >= 1 {
            req.key_type = 0;
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = find_coordinator::decode(&mut r, v, flex).expect("decodes");
        let want: Vec<String> = if v <= 3 { vec!["g1".into()] } else { vec!["g1".into(), "g2".into()] };
        assert_eq!(d.keys, want, "v{v}");
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn join_group_every_version() {
    let (range, key) = versions(ApiKey::JoinGroup);
    for v in range {
        let mut req = JoinGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_session_timeout_ms(10_000)
            .with_member_id(s("m-1"))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default().with_name(s("range")).with_metadata(Bytes::from_static(b"\x00\x01meta")),
                JoinGroupRequestProtocol::default().with_name(s("roundrobin")).with_metadata(Bytes::new()),
            ]);
        if v >= 1 {
            req.rebalance_timeout_ms = 30_000;
        }
        if v >= 5 {
            req.group_instance_id = Some(s("inst"));
        }
        if v >= 8 {
            req.reason = Some(s("why"));
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = join_group::decode(&mut r, v, flex).expect("decodes");
        assert_eq!(d.group_id, "g");
        assert_eq!(d.session_timeout_ms, 10_000);
        assert_eq!(d.rebalance_timeout_ms, if v >= 1 { 30_000 } else { 10_000 }, "v{v}");
        assert_eq!(d.member_id, "m-1");
        assert_eq!(d.group_instance_id.as_deref(), (v >= 5).then_some("inst"));
        assert_eq!(d.protocol_type, "consumer");
        assert_eq!(d.protocols, vec![("range".into(), Bytes::from_static(b"\x00\x01meta")), ("roundrobin".into(), Bytes::new())]);
        assert_eq!(d.reason.as_deref(), (v >= 8).then_some("why"));
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn sync_group_every_version() {
    let (range, key) = versions(ApiKey::SyncGroup);
    for v in range {
        let mut req =
            SyncGroupRequest::default().with_group_id(GroupId(s("g"))).with_generation_id(3).with_member_id(s("m-1")).with_assignments(
                vec![SyncGroupRequestAssignment::default().with_member_id(s("m-2")).with_assignment(Bytes::from_static(b"a"))],
            );
        if v >= 3 {
            req.group_instance_id = Some(s("inst"));
        }
        if v >= 5 {
            req.protocol_type = Some(s("consumer"));
            req.protocol_name = Some(s("range"));
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = sync_group::decode(&mut r, v, flex).expect("decodes");
        assert_eq!((d.group_id.as_str(), d.generation_id, d.member_id.as_str()), ("g", 3, "m-1"));
        assert_eq!(d.group_instance_id.as_deref(), (v >= 3).then_some("inst"));
        assert_eq!(d.protocol_name.as_deref(), (v >= 5).then_some("range"));
        assert_eq!(d.assignments, vec![("m-2".into(), Bytes::from_static(b"a"))]);
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn heartbeat_every_version() {
    let (range, key) = versions(ApiKey::Heartbeat);
    for v in range {
        let mut req = HeartbeatRequest::default().with_group_id(GroupId(s("g"))).with_generation_id(7).with_member_id(s("m"));
        if v >= 3 {
            req.group_instance_id = Some(s("i"));
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = heartbeat::decode(&mut r, v, flex).expect("decodes");
        assert_eq!((d.group_id.as_str(), d.generation_id, d.member_id.as_str()), ("g", 7, "m"));
        assert_eq!(d.group_instance_id.as_deref(), (v >= 3).then_some("i"));
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn leave_group_every_version() {
    let (range, key) = versions(ApiKey::LeaveGroup);
    for v in range {
        let mut req = LeaveGroupRequest::default().with_group_id(GroupId(s("g")));
        if v <= 2 {
            req.member_id = s("m");
        } else {
            let mut a = MemberIdentity::default().with_member_id(s("m")).with_group_instance_id(None);
            let mut b = MemberIdentity::default().with_member_id(s("")).with_group_instance_id(Some(s("i")));
            if v >= 5 {
                a.reason = Some(s("bye"));
                b.reason = None;
            }
            req.members = vec![a, b];
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = leave_group::decode(&mut r, v, flex).expect("decodes");
        let want = if v <= 2 { vec![("m".into(), None)] } else { vec![("m".into(), None), (String::new(), Some("i".into()))] };
        assert_eq!(d.members, want, "v{v}");
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn offset_commit_every_version() {
    let (range, key) = versions(ApiKey::OffsetCommit);
    for v in range {
        let mut part = OffsetCommitRequestPartition::default()
            .with_partition_index(2)
            .with_committed_offset(42)
            .with_committed_metadata(Some(s("md")));
        if v >= 6 {
            part.committed_leader_epoch = 5;
        }
        let mut req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(4)
            .with_member_id(s("m"))
            .with_topics(vec![OffsetCommitRequestTopic::default().with_name(TopicName(s("t"))).with_partitions(vec![part])]);
        if (2..=4).contains(&v) {
            req.retention_time_ms = 1000;
        }
        if v >= 7 {
            req.group_instance_id = Some(s("i"));
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = offset_commit::decode(&mut r, v, flex).expect("decodes");
        assert_eq!((d.group_id.as_str(), d.generation_id, d.member_id.as_str()), ("g", 4, "m"));
        assert_eq!(d.group_instance_id.as_deref(), (v >= 7).then_some("i"));
        assert_eq!(
            d.topics,
            vec![("t".into(), vec![offset_commit::CommitPartition { partition: 2, offset: 42, metadata: Some("md".into()) }])]
        );
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

#[test]
fn offset_fetch_every_version() {
    let (range, key) = versions(ApiKey::OffsetFetch);
    for v in range {
        for all in [false, true] {
            if all && v < 2 {
                continue; // null topics arrive in v2
            }
            let mut req = OffsetFetchRequest::default();
            if v <= 7 {
                req.group_id = GroupId(s("g"));
                req.topics = (!all)
                    .then(|| vec![OffsetFetchRequestTopic::default().with_name(TopicName(s("t"))).with_partition_indexes(vec![0, 3])]);
            } else {
                req.groups = vec![
                    OffsetFetchRequestGroup::default().with_group_id(GroupId(s("g"))).with_topics((!all).then(|| {
                        vec![OffsetFetchRequestTopics::default().with_name(TopicName(s("t"))).with_partition_indexes(vec![0, 3])]
                    })),
                    OffsetFetchRequestGroup::default().with_group_id(GroupId(s("h"))).with_topics(None),
                ];
            }
            if v >= 7 {
                req.require_stable = true;
            }
            let (mut r, flex) = encoded(key, &req, v);
            let d = offset_fetch::decode(&mut r, v, flex).expect("decodes");
            let topics = (!all).then(|| vec![("t".to_owned(), vec![0, 3])]);
            assert_eq!(d.groups[0], offset_fetch::FetchGroup { group_id: "g".into(), topics }, "v{v}");
            assert_eq!(d.groups.len(), if v >= 8 { 2 } else { 1 });
            assert_eq!(d.require_stable, v >= 7);
            assert_eq!(r.remaining(), 0, "v{v}");
        }
    }
}

#[test]
fn list_describe_delete_every_version() {
    let (range, key) = versions(ApiKey::ListGroups);
    for v in range {
        let mut req = ListGroupsRequest::default();
        if v >= 4 {
            req.states_filter = vec![s("Stable")];
        }
        if v >= 5 {
            req.types_filter = vec![s("classic")];
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = list_groups::decode(&mut r, v, flex).expect("decodes");
        assert_eq!(d.states_filter.len(), usize::from(v >= 4));
        assert_eq!(d.types_filter.len(), usize::from(v >= 5));
        assert_eq!(r.remaining(), 0, "v{v}");
    }
    let (range, key) = versions(ApiKey::DescribeGroups);
    for v in range {
        let mut req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s("a")), GroupId(s("b"))]);
        if v >= 3 {
            req.include_authorized_operations = true;
        }
        let (mut r, flex) = encoded(key, &req, v);
        let d = describe_groups::decode(&mut r, v, flex).expect("decodes");
        assert_eq!(d.groups, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(d.include_authorized_operations, v >= 3);
        assert_eq!(r.remaining(), 0, "v{v}");
    }
    let (range, key) = versions(ApiKey::DeleteGroups);
    for v in range {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("a"))]);
        let (mut r, flex) = encoded(key, &req, v);
        assert_eq!(delete_groups::decode(&mut r, v, flex).expect("decodes"), vec!["a".to_owned()]);
        assert_eq!(r.remaining(), 0, "v{v}");
    }
}

proptest! {
    #[test]
    fn no_group_decoder_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..200), v in 0i16..10) {
        let b = Bytes::from(buf);
        let r = || Reader::new(b.clone());
        for flex in [false, true] {
            let _ = find_coordinator::decode(&mut r(), v, flex);
            let _ = join_group::decode(&mut r(), v, flex);
            let _ = sync_group::decode(&mut r(), v, flex);
            let _ = heartbeat::decode(&mut r(), v, flex);
            let _ = leave_group::decode(&mut r(), v, flex);
            let _ = offset_commit::decode(&mut r(), v, flex);
            let _ = offset_fetch::decode(&mut r(), v, flex);
            let _ = list_groups::decode(&mut r(), v, flex);
            let _ = describe_groups::decode(&mut r(), v, flex);
            let _ = delete_groups::decode(&mut r(), v, flex);
        }
    }
}
