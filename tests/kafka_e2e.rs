//! Kafka end-to-end: hand-built requests (kafka-protocol's client side) over
//! a real socket to an in-process polymq server, decoded responses.

mod kafka_common;

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use kafka_common::{batch, decode_records, record, TestBroker};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use polymq::queue::QueueOptions;
use polymq::record::Message;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn produce_req(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])])
}

fn fetch_req(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20)])])
}

async fn produce(c: &mut kafka_common::Client, topic: &str, values: &[&str]) -> Result<i64> {
    let recs: Vec<_> = values.iter().map(|v| record(Some(b"k"), Some(v.as_bytes()), 1_700_000_000_000)).collect();
    let resp = c.send(&produce_req(topic, 0, batch(&recs)?, -1), 7).await?;
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "{:?}", p.error_message);
    Ok(p.base_offset)
}

async fn fetch_values(c: &mut kafka_common::Client, topic: &str, offset: i64, version: i16) -> Result<Vec<(i64, String)>> {
    let resp = c.send(&fetch_req(topic, 0, offset, 0), version).await?;
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    Ok(decode_records(&p.records)?
        .into_iter()
        .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()))
        .collect())
}

#[tokio::test]
async fn api_versions_lists_the_served_apis() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let resp = c.send(&ApiVersionsRequest::default(), 3).await?;
    assert_eq!(resp.error_code, 0);
    for key in [0, 1, 2, 3, 18, 19, 20, 22, 32, 33, 37, 44, 60] {
        assert!(resp.api_keys.iter().any(|k| k.api_key == key), "api key {key} advertised");
    }
    Ok(())
}

#[tokio::test]
async fn metadata_auto_creates_and_lists_topics() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("auto")))]))
        .with_allow_auto_topic_creation(true);
    let resp = c.send(&req, 9).await?;
    assert_eq!(resp.brokers.len(), 1);
    assert_eq!(resp.brokers[0].port, broker.addr().port() as i32);
    assert_eq!(resp.topics[0].error_code, 0);
    assert_eq!(resp.topics[0].partitions.len(), 1);
    // Not allowed by the request: unknown.
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("nope")))]))
        .with_allow_auto_topic_creation(false);
    assert_eq!(c.send(&req, 9).await?.topics[0].error_code, 3);
    // All topics (null), at an old and a new version.
    for v in [1, 12] {
        let all = c.send(&MetadataRequest::default().with_topics(None), v).await?;
        let names: Vec<_> = all.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
        assert_eq!(names, vec!["auto".to_string()], "v{v}");
    }
    Ok(())
}

#[tokio::test]
async fn produce_fetch_and_restart_keep_offsets_and_bytes() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    assert_eq!(produce(&mut c, "t", &["a", "b", "c"]).await?, 0);
    assert_eq!(produce(&mut c, "t", &["d"]).await?, 3);
    let got = fetch_values(&mut c, "t", 0, 12).await?;
    assert_eq!(got, vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into())]);
    // An offset inside a batch returns that whole batch (clients skip).
    let got = fetch_values(&mut c, "t", 1, 4).await?;
    assert_eq!(got.first().map(|g| g.0), Some(0));
    broker.restart().await?;
    let mut c = broker.client().await?;
    let got = fetch_values(&mut c, "t", 3, 11).await?;
    assert_eq!(got, vec![(3, "d".into())]);
    assert_eq!(produce(&mut c, "t", &["e"]).await?, 4, "offsets go on after a restart");
    Ok(())
}

#[tokio::test]
async fn acks_zero_gets_no_response_but_is_stored() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let recs = [record(None, Some(b"fire"), 1)];
    c.send_only(&produce_req("z", 0, batch(&recs)?, 0), 7).await?;
    // The next response on the connection answers the next request.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = c.send(&fetch_req("z", 0, 0, 100), 11).await?;
        let p = &resp.responses[0].partitions[0];
        if p.error_code == 0 && p.high_watermark == 1 {
            assert_eq!(decode_records(&p.records)?[0].value.as_deref(), Some(&b"fire"[..]));
            break;
        }
        assert!(Instant::now() < deadline, "acks=0 record never appeared");
    }
    Ok(())
}

#[tokio::test]
async fn bad_batches_get_kafkas_errors() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let good = batch(&[record(None, Some(b"x"), 1)])?;
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let resp = c.send(&produce_req("bad", 0, Bytes::from(corrupt), 1), 7).await?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 2, "CORRUPT_MESSAGE");
    let mut magic1 = good.to_vec();
    magic1[16] = 1;
    let resp = c.send(&produce_req("bad", 0, Bytes::from(magic1), 1), 7).await?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 87, "INVALID_RECORD");
    let resp = c.send(&produce_req("bad", 5, good, 1), 7).await?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    Ok(())
}

#[tokio::test]
async fn fetch_long_polls_and_wakes_on_produce() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    produce(&mut c, "lp", &["first"]).await?;
    // Nothing at offset 1: the fetch waits about max_wait_ms.
    let started = Instant::now();
    let resp = c.send(&fetch_req("lp", 0, 1, 300), 12).await?;
    assert!(decode_records(&resp.responses[0].partitions[0].records)?.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "waited {:?}", started.elapsed());
    // A produce on another connection ends the wait early.
    let mut producer = broker.client().await?;
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let resp = c.send(&fetch_req("lp", 0, 1, 20_000), 12).await;
        (resp, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    produce(&mut producer, "lp", &["second"]).await?;
    let (resp, took) = waiter.await?;
    let recs = decode_records(&resp?.responses[0].partitions[0].records)?;
    assert_eq!(recs[0].value.as_deref(), Some(&b"second"[..]));
    assert!(took < Duration::from_secs(10), "woken by the produce, took {took:?}");
    Ok(())
}

#[tokio::test]
async fn out_of_range_offsets_and_list_offsets() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let t0 = 1_700_000_000_000;
    for i in 0..3 {
        let recs = [record(None, Some(b"v"), t0 + i * 1000)];
        c.send(&produce_req("lo", 0, batch(&recs)?, 1), 7).await?;
    }
    let resp = c.send(&fetch_req("lo", 0, 99, 0), 11).await?;
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 1, "OFFSET_OUT_OF_RANGE");
    let ask = |ts: i64| {
        ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
            .with_name(name("lo"))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(ts)])])
    };
    for (ts, want) in [(-2, 0), (-1, 3), (t0 + 500, 1), (t0 + 2000, 2), (t0 + 9999, -1)] {
        let resp = c.send(&ask(ts), 5).await?;
        let p = &resp.topics[0].partitions[0];
        assert_eq!((p.error_code, p.offset), (0, want), "timestamp {ts}");
    }
    Ok(())
}

#[tokio::test]
async fn messages_of_other_protocols_are_fetched_as_records() -> Result<()> {
    let broker = TestBroker::start().await?;
    let store = broker.store();
    let q = store.declare_queue(&polymq::topic::partition_queue("sensors", 0), QueueOptions::stream()).await?.id;
    let mut msg = Message::new(Bytes::from_static(b"21.5")).with_key(Bytes::from_static(b"sensors/dev42/temp"));
    msg.headers.push((Bytes::from_static(b"qos"), Bytes::from_static(b"1")));
    msg.timestamp_ms = 1_700_000_000_123;
    store.append(msg, &[q]).await?;
    let mut c = broker.client().await?;
    produce(&mut c, "sensors", &["from-kafka"]).await?;
    let resp = c.send(&fetch_req("sensors", 0, 0, 0), 12).await?;
    let recs = decode_records(&resp.responses[0].partitions[0].records)?;
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].offset, recs[0].timestamp), (0, 1_700_000_000_123));
    assert_eq!(recs[0].key.as_deref(), Some(&b"sensors/dev42/temp"[..]));
    assert_eq!(recs[0].value.as_deref(), Some(&b"21.5"[..]));
    assert_eq!(recs[1].value.as_deref(), Some(&b"from-kafka"[..]));
    Ok(())
}

async fn send(c: &mut kafka_common::Client, b: Bytes) -> Result<(i16, i64)> {
    let resp = c.send(&produce_req("idem", 0, b, -1), 7).await?;
    let p = &resp.responses[0].partition_responses[0];
    Ok((p.error_code, p.base_offset))
}

#[tokio::test]
async fn idempotent_producer_duplicates_and_gaps() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let init = c.send(&InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000), 4).await?;
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let idem = |seq: i32, n: usize| -> Result<Bytes> {
        let recs: Vec<_> = (0..n)
            .map(|i| {
                let mut r = record(None, Some(format!("s{}", seq + i as i32).as_bytes()), 1);
                r.producer_id = pid;
                r.producer_epoch = 0;
                r.sequence = seq + i as i32;
                r
            })
            .collect();
        batch(&recs)
    };
    assert_eq!(send(&mut c, idem(0, 2)?).await?, (0, 0));
    assert_eq!(send(&mut c, idem(2, 1)?).await?, (0, 2));
    assert_eq!(send(&mut c, idem(0, 2)?).await?, (0, 0), "a retried batch gets its original offset");
    assert_eq!(send(&mut c, idem(5, 1)?).await?.0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    // After a restart the state is rebuilt from the partition's tail.
    broker.restart().await?;
    let mut c = broker.client().await?;
    assert_eq!(send(&mut c, idem(2, 1)?).await?, (0, 2), "duplicate recognised after restart");
    assert_eq!(send(&mut c, idem(3, 1)?).await?, (0, 3));
    let values: Vec<_> = fetch_values(&mut c, "idem", 0, 12).await?.into_iter().map(|v| v.1).collect();
    assert_eq!(values, vec!["s0", "s1", "s2", "s3"], "nothing stored twice");
    // New ids after a restart never repeat an old one.
    let again = c.send(&InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000), 4).await?;
    assert!(again.producer_id.0 > pid);
    // Transactions are not served.
    let tx = InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))));
    assert_eq!(c.send(&tx, 4).await?.error_code, 53);
    Ok(())
}

#[tokio::test]
async fn admin_create_alter_describe_grow_delete() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let topic = |n: &str, parts: i32, configs: &[(&str, &str)]| {
        CreatableTopic::default().with_name(name(n)).with_num_partitions(parts).with_replication_factor(-1).with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        )
    };
    let req = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
        topic("adm", 3, &[("retention.ms", "3600000")]),
        topic("cmp", 1, &[("cleanup.policy", "compact")]),
        topic("bad/name", 1, &[]),
    ]);
    let resp = c.send(&req, 7).await?;
    let codes: Vec<_> = resp.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 40, 17]);
    assert_eq!(resp.topics[0].num_partitions, 3);
    let resp = c.send(&CreateTopicsRequest::default().with_topics(vec![topic("adm", 1, &[])]), 4).await?;
    assert_eq!(resp.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");

    let alter = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(StrBytes::from_static_str("adm"))
        .with_configs(vec![AlterableConfig::default()
            .with_name(StrBytes::from_static_str("retention.bytes"))
            .with_value(Some(StrBytes::from_static_str("1048576")))])]);
    assert_eq!(c.send(&alter, 1).await?.responses[0].error_code, 0);
    broker.restart().await?;
    let mut c = broker.client().await?;
    let describe = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(StrBytes::from_static_str("adm"))]);
    let resp = c.send(&describe, 4).await?;
    assert_eq!(resp.results[0].error_code, 0, "{:?}", resp.results[0].error_message);
    let value = |k: &str| resp.results[0].configs.iter().find(|e| &*e.name == k).and_then(|e| e.value.as_ref().map(|v| v.to_string()));
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));
    assert_eq!(value("retention.bytes").as_deref(), Some("1048576"), "the altered config survives a restart");
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));

    let grow = CreatePartitionsRequest::default().with_topics(vec![
        kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default().with_name(name("adm")).with_count(5),
    ]);
    assert_eq!(c.send(&grow, 3).await?.results[0].error_code, 0);
    let md = c
        .send(&MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("adm")))])), 9)
        .await?;
    assert_eq!(md.topics[0].partitions.len(), 5);

    let cluster = c.send(&DescribeClusterRequest::default(), 0).await?;
    assert_eq!((cluster.brokers.len(), cluster.controller_id.0), (1, 0));

    let del = DeleteTopicsRequest::default().with_topic_names(vec![name("adm"), name("ghost")]).with_timeout_ms(1000);
    let codes: Vec<_> = c.send(&del, 5).await?.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![0, 3]);
    let all = c.send(&MetadataRequest::default().with_topics(None), 9).await?;
    assert!(all.topics.is_empty());
    Ok(())
}

#[tokio::test]
async fn hostile_frames_close_only_their_connection() -> Result<()> {
    let broker = TestBroker::start().await?;
    // A Metadata v1 request announcing 2^31-1 topics in a few bytes.
    let mut bad = broker.client().await?;
    let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff];
    frame.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bad.send_raw(&frame).await?;
    assert!(bad.closed_by_server().await, "malformed request closes the connection");
    // An unknown API key, and an unsupported version of a known one: closed, as Kafka does.
    let mut unknown = broker.client().await?;
    unknown.send_raw(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff]).await?;
    assert!(unknown.closed_by_server().await);
    // Others are unaffected.
    let mut c = broker.client().await?;
    assert_eq!(c.send(&ApiVersionsRequest::default(), 0).await?.error_code, 0);
    Ok(())
}
