//! Produce (key 0), v3+: each partition's records are exactly one magic-2
//! batch, validated (length, magic, CRC-32C) and stored as ONE core message
//! holding the batch byte-exact (compression untouched), spanning its record
//! count, with the batch's max timestamp. acks=0 gets no response; acks=1
//! and acks=-1 are answered once the log has the batch as durably as the
//! fsync policy promises (one node: "all replicas" is this one).

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use polymq::record::Message;
use polymq::store::Ticket;
use polymq::StoreError;
use polymq_formats::record_batch::FORMAT as FORMAT_KAFKA_BATCH;

use super::{encode, topic_name, HandlerFuture, Reply, Request};
use crate::batch;
use crate::connection::Session;
use crate::producer::Check;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

pub(crate) fn decode(r: &mut Reader, _version: i16, flex: bool) -> WireResult<ProduceRequest> {
    let mut req = ProduceRequest::default();
    req.transactional_id = r.nullable_string(flex)?.map(|s| TransactionalId(StrBytes::from_string(s)));
    req.acks = r.i16()?;
    req.timeout_ms = r.i32()?;
    req.topic_data = r.array_of(flex, |r| {
        let mut t = TopicProduceData::default().with_name(topic_name(r.string(flex)?));
        t.partition_data = r.array_of(flex, |r| {
            let p = PartitionProduceData::default().with_index(r.i32()?).with_records(r.nullable_bytes(flex)?);
            r.tagged_fields(flex)?;
            Ok(p)
        })?;
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    r.tagged_fields(flex)?;
    Ok(req)
}

/// Where one partition's answer comes from.
enum Pending {
    Done {
        error: i16,
        base_offset: i64,
        message: Option<String>,
    },
    /// Handed to the log: the batch (with the idempotence state recorded for
    /// it, if any), and the copies of its records routed into the topic space.
    Ticket(Ticket, Option<(polymq::queue::QueueId, batch::BatchHeader, u64)>, Vec<Ticket>),
}

fn done(error: i16) -> Pending {
    Pending::Done { error, base_offset: -1, message: None }
}

fn storage_error(e: &StoreError) -> Pending {
    Pending::Done { error: store_error_code(e), base_offset: -1, message: Some(e.to_string()) }
}

/// A failed append's Kafka code. A full disk (`NoSpace`) is
/// KAFKA_STORAGE_ERROR, retriable: clients retry and succeed once space
/// returns.
fn store_error_code(e: &StoreError) -> i16 {
    match e {
        StoreError::RecordTooLarge { .. } => MESSAGE_TOO_LARGE,
        StoreError::QueueNotFound(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        StoreError::NoSpace => code::KAFKA_STORAGE_ERROR,
        _ => code::KAFKA_STORAGE_ERROR,
    }
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let shared = &session.shared;
        let store = &shared.store;
        let acks = body.acks;
        let mut pending: Vec<(TopicName, Vec<(i32, Pending)>)> = Vec::with_capacity(body.topic_data.len());
        for t in body.topic_data {
            let name = t.name.0.to_string();
            let mut parts = topics::partitions(store, &name);
            if parts.is_empty() && shared.config.auto_create_topics && topics::valid_name(&name) {
                parts = topics::create(store, &name, shared.config.num_partitions, Default::default()).await.unwrap_or_default();
            }
            let mut answers = Vec::with_capacity(t.partition_data.len());
            for p in t.partition_data {
                let answer = if !(-1..=1).contains(&acks) {
                    done(INVALID_REQUIRED_ACKS)
                } else if body.transactional_id.is_some() {
                    // No transactions yet: what Kafka answers a transactional
                    // id it may not use (fatal in clients, not retried forever).
                    done(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                } else {
                    match usize::try_from(p.index).ok().and_then(|i| parts.get(i)) {
                        None => done(code::UNKNOWN_TOPIC_OR_PARTITION),
                        Some(&q) => append(session, &name, q, p.records).await,
                    }
                };
                answers.push((p.index, answer));
            }
            pending.push((t.name, answers));
        }
        if acks == 0 {
            // No response; the tickets are dropped (fire and forget), the
            // appends go on.
            return Ok(Reply::None);
        }
        let mut responses = Vec::with_capacity(pending.len());
        for (name, answers) in pending {
            let mut partition_responses = Vec::with_capacity(answers.len());
            for (index, answer) in answers {
                let (error, base_offset, message) = match answer {
                    Pending::Done { error, base_offset, message } => (error, base_offset, message),
                    Pending::Ticket(ticket, recorded, copies) => {
                        let answer = match ticket.wait().await {
                            Ok(appended) => (code::NONE, appended.offsets.first().map(|o| o.1 as i64).unwrap_or(-1), None),
                            Err(e) => {
                                if let Some((q, h, offset)) = recorded {
                                    shared.producers.forget(q, &h, offset);
                                }
                                (store_error_code(&e), -1, Some(e.to_string()))
                            }
                        };
                        // The answer is about the batch; a copy that failed
                        // to store is the subscribers' loss, logged.
                        for copy in copies {
                            if let Err(e) = copy.wait().await {
                                tracing::warn!(error = %e, "a Kafka record routed to subscribers was not stored");
                            }
                        }
                        answer
                    }
                };
                let mut pr = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(error)
                    .with_base_offset(base_offset)
                    .with_log_append_time_ms(-1);
                pr.error_message = message.map(StrBytes::from_string);
                partition_responses.push(pr);
            }
            responses.push(TopicProduceResponse::default().with_name(name).with_partition_responses(partition_responses));
        }
        let resp = ProduceResponse::default().with_responses(responses).with_throttle_time_ms(session.produce_throttle_ms);
        encode(ApiKey::Produce, &resp, version)
    })
}

/// Validates and hands one partition's batch to the log.
async fn append(session: &Session, topic: &str, q: polymq::queue::QueueId, records: Option<Bytes>) -> Pending {
    let Some(records) = records else { return done(batch::BatchError::Invalid("null records").code()) };
    let (stored, h) = match batch::validate_produce(&records) {
        Ok(v) => v,
        Err(e) => return Pending::Done { error: e.code(), base_offset: -1, message: Some(e.to_string()) },
    };
    if h.is_transactional() {
        return done(TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    if stored.len() > polymq::limits::RECORD_BYTES_MAX {
        return done(MESSAGE_TOO_LARGE);
    }
    let msg = Message {
        payload: stored,
        timestamp_ms: u64::try_from(h.max_timestamp).unwrap_or(0),
        span: h.record_count as u32,
        format: FORMAT_KAFKA_BATCH,
        ..Message::default()
    };
    let store = &session.shared.store;
    let batch = msg.payload.clone();
    // The batch CRC was just verified over batch[21..]: the log combines it
    // into its record checksum rather than reading the batch a second time.
    let known = Some(polymq::store::KnownCrc { from: batch::CRC_START, crc: h.crc });
    if h.producer_id < 0 || h.base_sequence < 0 {
        return match store.submit_known_crc(msg, &[q], known).await {
            Ok(ticket) => Pending::Ticket(ticket, None, route_records(session, topic, &batch).await),
            Err(e) => storage_error(&e),
        };
    }
    let producers = &session.shared.producers;
    let _serial = producers.append.lock().await;
    match producers.check(store, q, &h) {
        Check::Duplicate(offset) => Pending::Done { error: code::NONE, base_offset: offset as i64, message: None },
        Check::Refuse(error) => done(error),
        Check::Append => match store.submit_known_crc(msg, &[q], known).await {
            Ok(ticket) => {
                // Recorded at hand-off: a retry arriving before the log
                // write completes is already a duplicate.
                let offset = ticket.offsets().first().map(|o| o.1).unwrap_or(0);
                producers.record(q, &h, offset);
                drop(_serial);
                Pending::Ticket(ticket, Some((q, h, offset)), route_records(session, topic, &batch).await)
            }
            Err(e) => storage_error(&e),
        },
    }
}

/// The one address space: each record of a batch produced to `topic` is
/// routed in the topic space MQTT and AMQP's `amq.topic` share, under the
/// topic its key (or the mapping's topic header) names inside the subtree
/// `topic/...` (`polymq::mapping::Mapping::topic_for_record`), and stored
/// once more for the queues it reaches: the batch stays byte-exact for Kafka
/// consumers and MQTT/AMQP queues need single messages with their own
/// acks. Nothing is decoded unless some binding could match under the
/// topic's first level, so plain Kafka traffic pays one trie lookup.
async fn route_records(session: &Session, topic: &str, batch: &Bytes) -> Vec<Ticket> {
    let mapping = &session.shared.config.mapping;
    let store = &session.shared.store;
    if !mapping.streams_to_topics {
        return Vec::new();
    }
    let Some(first) = mapping.first_level_for(topic) else { return Vec::new() };
    if !store.may_route_under(&mapping.topic_space, &first, true) {
        return Vec::new();
    }
    let records = match polymq_formats::record_batch::decode(batch, mapping.decoded_batch_bytes_max as usize) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(topic, error = %e, "a produced batch is not routed to subscribers");
            return Vec::new();
        }
    };
    let mut tickets = Vec::new();
    for r in records {
        let Some(t) = mapping.topic_for_record(topic, r.key.as_deref(), &r.headers) else { continue };
        let levels: Vec<&str> = t.split('/').collect();
        let targets = store.route(&mapping.topic_space, &levels, true);
        if targets.is_empty() {
            continue;
        }
        let mut headers = polymq::mapping::headers_from_record(&r.headers);
        headers.push((Bytes::from_static(polymq::mapping::header::TOPIC), Bytes::from(t)));
        headers.push((Bytes::from_static(polymq::mapping::header::SOURCE_STREAM), Bytes::copy_from_slice(topic.as_bytes())));
        let msg = Message {
            key: r.key.unwrap_or_default(),
            headers,
            payload: r.value.unwrap_or_default(),
            timestamp_ms: u64::try_from(r.timestamp_ms).unwrap_or(0),
            ..Message::new(Bytes::new())
        };
        match store.submit(msg, &targets).await {
            Ok(t) => tickets.push(t),
            Err(e) => tracing::warn!(topic, error = %e, "a Kafka record routed to subscribers was not stored"),
        }
    }
    tickets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 3..=9 {
            let part = PartitionProduceData::default().with_index(2).with_records(Some(Bytes::from_static(b"batch-bytes")));
            let req = ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
                .with_acks(-1)
                .with_timeout_ms(1500)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic_name("a".into()))
                        .with_partition_data(vec![part.clone(), part.with_index(0)]),
                    TopicProduceData::default().with_name(topic_name("b".into())),
                ]);
            round_trip(ApiKey::Produce, &req, v, decode);
            round_trip(ApiKey::Produce, &ProduceRequest::default().with_acks(1), v, decode);
        }
    }
}
