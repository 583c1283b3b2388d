//! What the examples share: broker addresses (defaults of `polymq serve`,
//! overridable with POLYMQ_HOST) and a tiny Kafka client over the
//! kafka-protocol crate (no C library to build), enough to create a topic,
//! produce one record and fetch from an offset.
#![allow(dead_code)] // each example uses a part

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, FetchRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn host() -> String {
    std::env::var("POLYMQ_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}

pub struct Kafka {
    stream: TcpStream,
    correlation_id: i32,
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

impl Kafka {
    pub async fn connect() -> Result<Kafka> {
        let addr = format!("{}:9092", host());
        let stream =
            TcpStream::connect(&addr).await.with_context(|| format!("connecting to Kafka at {addr} (is `polymq serve` running?)"))?;
        Ok(Kafka { stream, correlation_id: 0 })
    }

    async fn send<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("api key {}", R::KEY))?;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("polymq-example")));
        let mut body = BytesMut::new();
        header.encode(&mut body, key.request_header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        self.stream.write_all(&frame).await?;
        let size = self.stream.read_i32().await?;
        let mut buf = vec![0u8; usize::try_from(size)?];
        self.stream.read_exact(&mut buf).await?;
        let mut buf = Bytes::from(buf);
        let h = ResponseHeader::decode(&mut buf, <R::Response as HeaderVersion>::header_version(version))?;
        if h.correlation_id != self.correlation_id {
            bail!("response out of order");
        }
        let resp = R::Response::decode(&mut buf, version)?;
        if buf.has_remaining() {
            bail!("trailing bytes in the response");
        }
        Ok(resp)
    }

    /// Creates `topic` with one partition; an existing topic is fine.
    pub async fn create_topic(&mut self, topic: &str) -> Result<()> {
        let t = CreatableTopic::default().with_name(name(topic)).with_num_partitions(1).with_replication_factor(-1);
        let resp = self.send(&CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![t]), 5).await?;
        match resp.topics[0].error_code {
            0 | 36 => Ok(()), // 36: TOPIC_ALREADY_EXISTS
            code => bail!("creating {topic}: error {code}"),
        }
    }

    /// Produces one record to partition 0 and returns its offset.
    pub async fn produce(&mut self, topic: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) -> Result<i64> {
        let mut h = IndexMap::new();
        for (k, v) in headers {
            h.insert(StrBytes::from_string((*k).to_owned()), Some(Bytes::copy_from_slice(v.as_bytes())));
        }
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value)),
            headers: h,
        };
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(&mut batch, [record].iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })?;
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch.freeze()))])]);
        let resp = self.send(&req, 7).await?;
        let p = &resp.responses[0].partition_responses[0];
        if p.error_code != 0 {
            bail!("produce to {topic}: error {}", p.error_code);
        }
        Ok(p.base_offset)
    }

    /// Records of partition 0 from `offset`, waiting up to `wait` for some.
    pub async fn fetch(&mut self, topic: &str, offset: i64, wait: Duration) -> Result<Vec<Record>> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(wait.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(8 << 20)])]);
        let resp = self.send(&req, 12).await?;
        let p = &resp.responses[0].partitions[0];
        if p.error_code != 0 {
            bail!("fetch {topic}: error {}", p.error_code);
        }
        let mut out = Vec::new();
        if let Some(mut b) = p.records.clone() {
            for set in RecordBatchDecoder::decode_all(&mut b)? {
                out.extend(set.records.into_iter().filter(|r| r.offset >= offset));
            }
        }
        Ok(out)
    }

    /// The next offset of partition 0 (where a consumer starting now begins).
    pub async fn end_offset(&mut self, topic: &str) -> Result<i64> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1)])]);
        let resp = self.send(&req, 12).await?;
        Ok(resp.responses[0].partitions[0].high_watermark)
    }
}

pub fn show(r: &Record) -> String {
    let text = |b: &Option<Bytes>| b.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| "null".into());
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| format!("{}={}", k.as_str(), v.as_deref().map(String::from_utf8_lossy).unwrap_or_default()))
        .collect();
    format!("offset {} key {} value {} headers [{}]", r.offset, text(&r.key), text(&r.value), headers.join(", "))
}
