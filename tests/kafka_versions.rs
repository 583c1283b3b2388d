//! Every API in ApiVersions at every version it advertises, through the
//! real handlers: a representative request (naming a topic with data, a
//! group with offsets) must get a response that decodes. kafka-protocol
//! refuses to encode a field set at a version that lacks it; such a
//! handler bug closes the connection instead of answering, and shows here.

mod kafka_common;

use anyhow::{Context, Result};
use bytes::Bytes;
use kafka_common::{batch, record, Client, TestBroker};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Request, StrBytes};
use polymq_kafka::KafkaConfig;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}
fn topic(v: &str) -> TopicName {
    TopicName(s(v))
}
fn group(v: &str) -> GroupId {
    GroupId(s(v))
}

async fn call<R: Request>(c: &mut Client, req: R, version: i16) -> Result<()> {
    c.send(&req, version).await.with_context(|| format!("{:?} v{version}", ApiKey::try_from(R::KEY)))?;
    Ok(())
}

async fn one(broker: &TestBroker, key: ApiKey, v: i16) -> Result<()> {
    use kafka_protocol::messages::{
        alter_configs_request as ac, create_partitions_request as cp, create_topics_request as ct, describe_configs_request as dc,
        fetch_request as f, incremental_alter_configs_request as iac, join_group_request as jg, leave_group_request as lg,
        list_offsets_request as lo, metadata_request as md, offset_commit_request as oc, offset_fetch_request as of, produce_request as p,
    };
    let c = &mut broker.client().await?;
    let t = "t";
    match key {
        ApiKey::ApiVersions => call(c, ApiVersionsRequest::default(), v).await,
        ApiKey::Metadata => {
            call(c, MetadataRequest::default().with_topics(Some(vec![md::MetadataRequestTopic::default().with_name(Some(topic(t)))])), v)
                .await
        }
        ApiKey::Produce => {
            let records = batch(&[record(Some(b"k"), Some(b"v"), 1_700_000_000_000)])?;
            let part = p::PartitionProduceData::default().with_index(0).with_records(Some(records));
            let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![p::TopicProduceData::default()
                .with_name(topic(t))
                .with_partition_data(vec![part.clone(), part.with_index(7)])]);
            call(c, req, v).await
        }
        ApiKey::Fetch => {
            let part = |i: i32| f::FetchPartition::default().with_partition(i).with_fetch_offset(0).with_partition_max_bytes(1 << 20);
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![f::FetchTopic::default().with_topic(topic(t)).with_partitions(vec![part(0), part(1), part(9)])]);
            call(c, req, v).await
        }
        ApiKey::ListOffsets => {
            let parts = [-2i64, -1, 0, 1_800_000_000_000]
                .iter()
                .enumerate()
                .map(|(i, ts)| lo::ListOffsetsPartition::default().with_partition_index(if i == 3 { 9 } else { 0 }).with_timestamp(*ts));
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![lo::ListOffsetsTopic::default().with_name(topic(t)).with_partitions(parts.collect())]);
            call(c, req, v).await
        }
        ApiKey::InitProducerId => call(c, InitProducerIdRequest::default().with_transaction_timeout_ms(60_000), v).await,
        ApiKey::CreateTopics => {
            let new = ct::CreatableTopic::default().with_name(topic(&format!("c{v}"))).with_num_partitions(1).with_replication_factor(1);
            let bad = ct::CreatableTopic::default().with_name(topic(t)).with_num_partitions(1).with_replication_factor(1);
            call(c, CreateTopicsRequest::default().with_topics(vec![new, bad]).with_timeout_ms(5000), v).await
        }
        ApiKey::DeleteTopics => {
            let req = if v >= 6 {
                DeleteTopicsRequest::default()
                    .with_topics(vec![delete_topics_request::DeleteTopicState::default().with_name(Some(topic("nope")))])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![topic("nope")])
            };
            call(c, req.with_timeout_ms(5000), v).await
        }
        ApiKey::CreatePartitions => {
            let req = CreatePartitionsRequest::default().with_timeout_ms(5000).with_topics(vec![
                cp::CreatePartitionsTopic::default().with_name(topic(t)).with_count(1),
                cp::CreatePartitionsTopic::default().with_name(topic("nope")).with_count(3),
            ]);
            call(c, req, v).await
        }
        ApiKey::DescribeConfigs => {
            let req = DescribeConfigsRequest::default().with_resources(vec![
                dc::DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s(t)),
                dc::DescribeConfigsResource::default().with_resource_type(4).with_resource_name(s("0")),
                dc::DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("nope")),
            ]);
            call(c, req, v).await
        }
        ApiKey::AlterConfigs => {
            let cfg = ac::AlterableConfig::default().with_name(s("retention.ms")).with_value(Some(s("86400000")));
            let req = AlterConfigsRequest::default().with_resources(vec![
                ac::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s(t)).with_configs(vec![cfg.clone()]),
                ac::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s("nope")).with_configs(vec![cfg]),
            ]);
            call(c, req, v).await
        }
        ApiKey::IncrementalAlterConfigs => {
            let cfg =
                iac::AlterableConfig::default().with_name(s("retention.bytes")).with_config_operation(0).with_value(Some(s("1000000")));
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                iac::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s(t)).with_configs(vec![cfg.clone()]),
                iac::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s("nope")).with_configs(vec![cfg]),
            ]);
            call(c, req, v).await
        }
        ApiKey::DescribeCluster => call(c, DescribeClusterRequest::default(), v).await,
        ApiKey::OffsetCommit => {
            let req = OffsetCommitRequest::default().with_group_id(group("g")).with_generation_id_or_member_epoch(-1).with_topics(vec![
                oc::OffsetCommitRequestTopic::default().with_name(topic(t)).with_partitions(vec![
                    oc::OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(1),
                    oc::OffsetCommitRequestPartition::default().with_partition_index(9).with_committed_offset(1),
                ]),
            ]);
            call(c, req, v).await
        }
        ApiKey::OffsetFetch => {
            let req = if v >= 8 {
                OffsetFetchRequest::default().with_groups(vec![
                    of::OffsetFetchRequestGroup::default().with_group_id(group("g")).with_topics(Some(vec![
                        of::OffsetFetchRequestTopics::default().with_name(topic(t)).with_partition_indexes(vec![0, 1]),
                    ])),
                    of::OffsetFetchRequestGroup::default().with_group_id(group("g")).with_topics(None),
                ])
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(group("g"))
                    .with_topics(Some(vec![of::OffsetFetchRequestTopic::default().with_name(topic(t)).with_partition_indexes(vec![0, 1])]))
            };
            call(c, req, v).await
        }
        ApiKey::FindCoordinator => {
            let req = if v >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g"), s("h")])
            } else {
                FindCoordinatorRequest::default().with_key(s("g"))
            };
            call(c, req, v).await
        }
        ApiKey::JoinGroup => {
            let req = JoinGroupRequest::default()
                .with_group_id(group(&format!("j{v}")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 })
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![jg::JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"m"))]);
            call(c, req, v).await
        }
        ApiKey::SyncGroup => call(c, SyncGroupRequest::default().with_group_id(group("g")).with_member_id(s("m")), v).await,
        ApiKey::Heartbeat => call(c, HeartbeatRequest::default().with_group_id(group("g")).with_member_id(s("m")), v).await,
        ApiKey::LeaveGroup => {
            let req = if v >= 3 {
                LeaveGroupRequest::default()
                    .with_group_id(group("g"))
                    .with_members(vec![lg::MemberIdentity::default().with_member_id(s("m"))])
            } else {
                LeaveGroupRequest::default().with_group_id(group("g")).with_member_id(s("m"))
            };
            call(c, req, v).await
        }
        ApiKey::DescribeGroups => call(c, DescribeGroupsRequest::default().with_groups(vec![group("g"), group("nope")]), v).await,
        ApiKey::ListGroups => call(c, ListGroupsRequest::default(), v).await,
        ApiKey::DeleteGroups => call(c, DeleteGroupsRequest::default().with_groups_names(vec![group("nope")]), v).await,
        ApiKey::SaslHandshake => call(c, SaslHandshakeRequest::default().with_mechanism(s("PLAIN")), v).await,
        ApiKey::SaslAuthenticate => call(c, SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0u\0p")), v).await,
        other => anyhow::bail!("{other:?} is advertised but this test has no request for it: add one"),
    }
}

#[tokio::test]
async fn every_advertised_api_answers_at_every_advertised_version() -> Result<()> {
    let broker =
        TestBroker::start_with(KafkaConfig { group_initial_rebalance_delay_ms: 0, num_partitions: 2, ..KafkaConfig::default() }).await?;
    // A topic with data and a group with an offset, so responses carry content.
    let mut c = broker.client().await?;
    one(&broker, ApiKey::Produce, 9).await?;
    one(&broker, ApiKey::OffsetCommit, 8).await?;
    let advertised = c.send(&ApiVersionsRequest::default(), 3).await?;
    let mut failures = Vec::new();
    let mut tried = 0;
    for api in &advertised.api_keys {
        let key = ApiKey::try_from(api.api_key).map_err(|_| anyhow::anyhow!("unknown key {}", api.api_key))?;
        // Versions kafka-protocol's client cannot encode (CreateTopics v0-1,
        // DeleteTopics v0: hand-encoded on our side) are covered elsewhere.
        let lowest = api.min_version.max(key.valid_versions().min);
        for v in lowest..=api.max_version {
            tried += 1;
            if let Err(e) = one(&broker, key, v).await {
                failures.push(format!("{key:?} v{v}: {e:#}"));
            }
        }
    }
    assert!(tried > 100, "only {tried} API versions tried");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
