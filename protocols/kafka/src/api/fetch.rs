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

use bytes::BytesMut;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::StrBytes;
use polymq::queue::QueueId;
use polymq_formats::record_batch::FORMAT as FORMAT_KAFKA_BATCH;

use super::{encode, topic_name, HandlerFuture, Request};
use crate::batch;
use crate::connection::Session;
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

fn partition(index: i32, error: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(Some(Vec::new()))
        .with_records(Some(bytes::Bytes::new()))
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
                    out_parts.push(partition(t.index, t.error));
                    continue;
                };
                let part_budget = i64::from(t.max_bytes.max(0)).min(budget);
                let read = match store.read(q, t.offset as u64, BATCHES_PER_PARTITION_MAX, part_budget.max(1) as u64) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "fetch read failed");
                        out_parts.push(partition(t.index, code::KAFKA_STORAGE_ERROR));
                        continue;
                    }
                };
                let mut records = BytesMut::new();
                for m in &read.messages {
                    let before = records.len();
                    if m.message.format == FORMAT_KAFKA_BATCH && m.message.payload.len() >= batch::HEADER_BYTES {
                        batch::put_stored(&mut records, &m.message.payload, m.offset);
                    } else {
                        batch::put_foreign(&mut records, &m.message, m.offset);
                    }
                    let size = (records.len() - before) as i64;
                    // KIP-74: the first batch of the response goes out even
                    // if it is larger than the limits, so a consumer always
                    // makes progress; after that, the limits hold.
                    if first_batch_sent && (records.len() as i64 > part_budget || size > budget) {
                        records.truncate(before);
                        break;
                    }
                    first_batch_sent = true;
                    budget -= size;
                }
                let hw = read.next_offset as i64;
                out_parts.push(
                    partition(t.index, code::NONE)
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(read.start_offset as i64)
                        .with_records(Some(records.freeze())),
                );
            }
            responses.push(FetchableTopicResponse::default().with_topic(name).with_partitions(out_parts));
        }
        encode(ApiKey::Fetch, &FetchResponse::default().with_session_id(0).with_responses(responses), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

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
