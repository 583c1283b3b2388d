//! Fetch (key 1), v4+: stored batches with their base offset set to the
//! offset the core assigned; messages of other protocols as one-record
//! batches; a long poll over every partition of the request (the core's
//! `wait_any`, woken by appends); `max_bytes` / `partition_max_bytes` with
//! KIP-74's rule (the first batch of the response comes even if larger);
//! OFFSET_OUT_OF_RANGE for offsets outside the log, so `auto.offset.reset`
//! works. No transactions, so read_committed reads what read_uncommitted does
//! (last stable offset = high watermark). Fetch sessions (KIP-227) are not
//! kept: every answer carries session id 0, so clients send full fetches.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use polymq::queue::QueueId;
use polymq_formats::record_batch::FORMAT as FORMAT_KAFKA_BATCH;

use super::{encode, topic_name, HandlerFuture, Reply, Request};
use crate::batch;
use crate::connection::Session;
use crate::rope::Rope;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// Longest long poll we honour (clients ask for ~0.5 s; a request timeout is 30 s).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Batches read per partition per fetch.
const BATCHES_PER_PARTITION_MAX: usize = 4096;

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<FetchRequest> {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(r.i32()?);
    req.max_wait_ms = r.i32()?;
    req.min_bytes = r.i32()?;
    req.max_bytes = r.i32()?;
    req.isolation_level = r.i8()?;
    if version >= 7 {
        req.session_id = r.i32()?;
        req.session_epoch = r.i32()?;
    }
    req.topics = r.array_of(flex, |r| {
        let mut t = FetchTopic::default().with_topic(topic_name(r.string(flex)?));
        t.partitions = r.array_of(flex, |r| {
            let mut p = FetchPartition::default().with_partition(r.i32()?);
            if version >= 9 {
                p.current_leader_epoch = r.i32()?;
            }
            p.fetch_offset = r.i64()?;
            if version >= 12 {
                p.last_fetched_epoch = r.i32()?;
            }
            if version >= 5 {
                p.log_start_offset = r.i64()?;
            }
            p.partition_max_bytes = r.i32()?;
            r.tagged_fields(flex)?;
            Ok(p)
        })?;
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    if version >= 7 {
        req.forgotten_topics_data = r.array_of(flex, |r| {
            let mut t = ForgottenTopic::default().with_topic(topic_name(r.string(flex)?));
            t.partitions = r.array_of(flex, |r| r.i32())?;
            r.tagged_fields(flex)?;
            Ok(t)
        })?;
    }
    if version >= 11 {
        req.rack_id = StrBytes::from_string(r.string(flex)?);
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

/// One partition of the request, resolved.
struct Target {
    index: i32,
    queue: Option<QueueId>,
    offset: i64,
    max_bytes: i32,
    error: i16,
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        if version >= 7 && body.session_id != 0 {
            let resp = FetchResponse::default().with_error_code(FETCH_SESSION_ID_NOT_FOUND);
            return encode(ApiKey::Fetch, &resp, version);
        }
        // Resolve every partition and check its offset first: an error is
        // answered at once, without waiting.
        let mut targets: Vec<(kafka_protocol::messages::TopicName, Vec<Target>)> = Vec::with_capacity(body.topics.len());
        let mut any_error = false;
        for t in body.topics {
            let parts = topics::partitions(store, &t.topic.0);
            let resolved = t
                .partitions
                .into_iter()
                .map(|p| {
                    let queue = usize::try_from(p.partition).ok().and_then(|i| parts.get(i)).copied();
                    let error = match queue.and_then(|q| store.queue_info(q)) {
                        None => code::UNKNOWN_TOPIC_OR_PARTITION,
                        Some(info) if p.fetch_offset < info.start_offset as i64 || p.fetch_offset > info.next_offset as i64 => {
                            OFFSET_OUT_OF_RANGE
                        }
                        Some(_) => code::NONE,
                    };
                    any_error |= error != code::NONE;
                    Target { index: p.partition, queue, offset: p.fetch_offset, max_bytes: p.partition_max_bytes, error }
                })
                .collect();
            targets.push((t.topic, resolved));
        }
        let min_bytes = body.min_bytes.max(0) as u64;
        let wait = Duration::from_millis(body.max_wait_ms.max(0) as u64).min(MAX_WAIT);
        if !any_error && !wait.is_zero() {
            let watched: Vec<(QueueId, u64)> =
                targets.iter().flat_map(|(_, ps)| ps.iter().filter_map(|p| p.queue.map(|q| (q, p.offset as u64)))).collect();
            let ids: Vec<QueueId> = watched.iter().map(|w| w.0).collect();
            let enough = || {
                let mut have = 0u64;
                for &(q, from) in &watched {
                    have += store.stream_bytes_from(q, from, min_bytes.max(1));
                    if have >= min_bytes.max(1) {
                        return true;
                    }
                }
                false
            };
            let _ = store.wait_any(&ids, wait, enough).await;
        }
        let mut budget = if body.max_bytes <= 0 { i64::MAX } else { i64::from(body.max_bytes) };
        let mut first_batch_sent = false;
        let mut responses = Vec::with_capacity(targets.len());
        for (name, parts) in targets {
            let mut out_parts = Vec::with_capacity(parts.len());
            for t in parts {
                let (Some(q), code::NONE) = (t.queue, t.error) else {
                    out_parts.push(PartitionOut::error(t.index, t.error));
                    continue;
                };
                let part_budget = i64::from(t.max_bytes.max(0)).min(budget);
                let read = match store.read(q, t.offset as u64, BATCHES_PER_PARTITION_MAX, part_budget.max(1) as u64) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "fetch read failed");
                        out_parts.push(PartitionOut::error(t.index, code::KAFKA_STORAGE_ERROR));
                        continue;
                    }
                };
                let mut records = Vec::with_capacity(read.messages.len());
                let mut records_len = 0i64;
                for m in read.messages {
                    let piece = if m.message.format == FORMAT_KAFKA_BATCH && m.message.payload.len() >= batch::HEADER_BYTES {
                        Piece::Stored(m.message.payload, m.offset)
                    } else {
                        let mut one = BytesMut::new();
                        batch::put_foreign(&mut one, &m.message, m.offset);
                        Piece::Foreign(one.freeze())
                    };
                    let size = piece.len() as i64;
                    // KIP-74: the first batch of the response goes out even
                    // if it is larger than the limits, so a consumer always
                    // makes progress; after that, the limits hold.
                    if first_batch_sent && (records_len + size > part_budget || size > budget) {
                        break;
                    }
                    first_batch_sent = true;
                    budget -= size;
                    records_len += size;
                    records.push(piece);
                }
                let hw = read.next_offset as i64;
                out_parts.push(PartitionOut {
                    index: t.index,
                    error: code::NONE,
                    high_watermark: hw,
                    log_start_offset: read.start_offset as i64,
                    records,
                });
            }
            responses.push((name, out_parts));
        }
        Ok(Reply::Chunks(encode_response(version, &responses)))
    })
}

/// One batch of a partition's records, as it goes out.
enum Piece {
    /// A stored Kafka batch and the offset the core gave it: sent as its
    /// rewritten first bytes, then the stored bytes themselves (no copy).
    Stored(Bytes, u64),
    /// A message of another protocol, encoded as a one-record batch.
    Foreign(Bytes),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Stored(b, _) | Piece::Foreign(b) => b.len(),
        }
    }
}

/// One partition of the answer.
struct PartitionOut {
    index: i32,
    error: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records: Vec<Piece>,
}

impl PartitionOut {
    fn error(index: i32, error: i16) -> PartitionOut {
        PartitionOut { index, error, high_watermark: -1, log_start_offset: -1, records: Vec::new() }
    }
}

fn put_uvarint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// An array or bytes length: i32, or (flexible) unsigned varint of n + 1.
fn put_len(out: &mut BytesMut, flex: bool, n: usize) {
    if flex {
        put_uvarint(out, n as u64 + 1);
    } else {
        out.put_i32(n as i32);
    }
}

/// Encodes the FetchResponse (v4..=12) byte for byte as `kafka-protocol`
/// does for these fields (throttle 0, no error, session 0, no aborted
/// transactions, no preferred replica, no tagged fields), with each stored
/// batch's bytes as their own chunk instead of copied into the buffer.
fn encode_response(version: i16, topics: &[(TopicName, Vec<PartitionOut>)]) -> Vec<Bytes> {
    let flex = version >= 12;
    let mut rope = Rope::new();
    let b = rope.buf();
    b.put_i32(0); // throttle_time_ms
    if version >= 7 {
        b.put_i16(code::NONE);
        b.put_i32(0); // session id: no fetch sessions
    }
    put_len(b, flex, topics.len());
    for (name, parts) in topics {
        let b = rope.buf();
        let name = name.0.as_bytes();
        if flex {
            put_uvarint(b, name.len() as u64 + 1);
        } else {
            b.put_i16(name.len() as i16);
        }
        b.put_slice(name);
        put_len(b, flex, parts.len());
        for p in parts {
            let b = rope.buf();
            b.put_i32(p.index);
            b.put_i16(p.error);
            b.put_i64(p.high_watermark);
            b.put_i64(p.high_watermark); // last stable offset: no transactions
            if version >= 5 {
                b.put_i64(p.log_start_offset);
            }
            put_len(b, flex, 0); // aborted transactions: none (not null)
            if version >= 11 {
                b.put_i32(-1); // preferred read replica
            }
            put_len(b, flex, p.records.iter().map(Piece::len).sum());
            for piece in &p.records {
                match piece {
                    Piece::Stored(stored, offset) => {
                        rope.buf().put_slice(&batch::stored_prefix(stored, *offset));
                        rope.push(stored.slice(batch::STORED_PREFIX..));
                    }
                    Piece::Foreign(encoded) => rope.push(encoded.clone()),
                }
            }
            if flex {
                put_uvarint(rope.buf(), 0);
            }
        }
        if flex {
            put_uvarint(rope.buf(), 0);
        }
    }
    if flex {
        put_uvarint(rope.buf(), 0);
    }
    rope.into_chunks()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::Encodable;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    use polymq::record::Message;

    fn stored_batch(n: i64, value_len: usize) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; value_len])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
            .expect("encode");
        buf.freeze()
    }

    fn foreign(offset: u64) -> Piece {
        let msg = Message { key: Bytes::from("a/b"), payload: Bytes::from("from mqtt"), timestamp_ms: 5, ..Message::default() };
        let mut one = BytesMut::new();
        batch::put_foreign(&mut one, &msg, offset);
        Piece::Foreign(one.freeze())
    }

    /// What the response was before: every batch copied into one buffer and
    /// the whole response encoded by `kafka-protocol`.
    fn by_kafka_protocol(version: i16, topics: &[(TopicName, Vec<PartitionOut>)]) -> Vec<u8> {
        let responses = topics
            .iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .iter()
                    .map(|p| {
                        let mut records = BytesMut::new();
                        for piece in &p.records {
                            match piece {
                                Piece::Stored(b, offset) => batch::put_stored(&mut records, b, *offset),
                                Piece::Foreign(b) => records.extend_from_slice(b),
                            }
                        }
                        PartitionData::default()
                            .with_partition_index(p.index)
                            .with_error_code(p.error)
                            .with_high_watermark(p.high_watermark)
                            .with_last_stable_offset(p.high_watermark)
                            .with_log_start_offset(p.log_start_offset)
                            .with_preferred_read_replica(BrokerId(-1))
                            .with_aborted_transactions(Some(Vec::new()))
                            .with_records(Some(records.freeze()))
                    })
                    .collect();
                FetchableTopicResponse::default().with_topic(name.clone()).with_partitions(partitions)
            })
            .collect();
        let mut buf = BytesMut::new();
        FetchResponse::default().with_session_id(0).with_responses(responses).encode(&mut buf, version).expect("encode");
        buf.to_vec()
    }

    #[test]
    fn the_chunked_response_is_byte_identical_to_kafka_protocols_at_every_version() {
        let big = stored_batch(3, 5000);
        let small = stored_batch(2, 10);
        for v in 4..=12 {
            let topics = vec![
                (
                    topic_name("orders".into()),
                    vec![
                        PartitionOut {
                            index: 0,
                            error: code::NONE,
                            high_watermark: 42,
                            log_start_offset: 3,
                            records: vec![Piece::Stored(big.clone(), 30), foreign(33), Piece::Stored(small.clone(), 34)],
                        },
                        PartitionOut::error(1, OFFSET_OUT_OF_RANGE),
                        PartitionOut { index: 2, error: code::NONE, high_watermark: 0, log_start_offset: 0, records: Vec::new() },
                    ],
                ),
                (topic_name("t".repeat(200)), vec![PartitionOut::error(7, code::UNKNOWN_TOPIC_OR_PARTITION)]),
                (topic_name("empty".into()), Vec::new()),
            ];
            let chunks = encode_response(v, &topics);
            assert_eq!(chunks.concat(), by_kafka_protocol(v, &topics), "v{v}");
            assert!(
                chunks.iter().any(|c| c.as_ptr() == big[batch::STORED_PREFIX..].as_ptr()),
                "v{v}: the stored batch is sent from its own bytes, not copied"
            );
            assert_eq!(encode_response(v, &[]).concat(), by_kafka_protocol(v, &[]), "v{v}: no topics");
        }
    }

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 4..=12 {
            let mut p = FetchPartition::default().with_partition(3).with_fetch_offset(77).with_partition_max_bytes(1 << 20);
            if v >= 9 {
                p.current_leader_epoch = 5;
            }
            if v >= 12 {
                p.last_fetched_epoch = 4;
            }
            if v >= 5 {
                p.log_start_offset = 2;
            }
            let mut req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(50 << 20)
                .with_isolation_level(1)
                .with_topics(vec![FetchTopic::default().with_topic(topic_name("t".into())).with_partitions(vec![p.clone(), p])]);
            if v >= 7 {
                req.session_id = 0;
                req.session_epoch = -1;
                req.forgotten_topics_data =
                    vec![ForgottenTopic::default().with_topic(topic_name("old".into())).with_partitions(vec![1, 2])];
            }
            if v >= 11 {
                req.rack_id = StrBytes::from_static_str("rack-a");
            }
            round_trip(ApiKey::Fetch, &req, v, decode);
        }
    }
}
