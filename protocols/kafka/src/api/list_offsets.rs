//! ListOffsets (key 2), v1+: earliest (-2), latest (-1) and by timestamp
//! (the first batch whose max timestamp is at or after it, through the
//! core's `offset_for_timestamp`). Without transactions read_committed and
//! read_uncommitted answer alike.

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse};

use super::{encode, topic_name, HandlerFuture, Request};
use crate::connection::Session;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<ListOffsetsRequest> {
    let mut req = ListOffsetsRequest::default().with_replica_id(BrokerId(r.i32()?));
    if version >= 2 {
        req.isolation_level = r.i8()?;
    }
    req.topics = r.array_of(flex, |r| {
        let mut t = ListOffsetsTopic::default().with_name(topic_name(r.string(flex)?));
        t.partitions = r.array_of(flex, |r| {
            let mut p = ListOffsetsPartition::default().with_partition_index(r.i32()?);
            if version >= 4 {
                p.current_leader_epoch = r.i32()?;
            }
            p.timestamp = r.i64()?;
            r.tagged_fields(flex)?;
            Ok(p)
        })?;
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    r.tagged_fields(flex)?;
    Ok(req)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let mut topics_out = Vec::with_capacity(body.topics.len());
        for t in body.topics {
            let parts = topics::partitions(store, &t.name.0);
            let mut out = Vec::with_capacity(t.partitions.len());
            for p in t.partitions {
                let mut resp = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                if version >= 4 {
                    resp.leader_epoch = 0;
                }
                let info = usize::try_from(p.partition_index).ok().and_then(|i| parts.get(i)).and_then(|q| store.queue_info(*q));
                let Some(info) = info else {
                    out.push(resp.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION).with_timestamp(-1).with_offset(-1));
                    continue;
                };
                let (offset, timestamp) = match p.timestamp {
                    LATEST => (info.next_offset as i64, -1),
                    EARLIEST => (info.start_offset as i64, -1),
                    ts if ts >= 0 => match store.offset_for_timestamp(info.id, ts as u64) {
                        Ok(o) if o < info.next_offset => {
                            // The found batch's timestamp (its max), read back.
                            let found = store.read(info.id, o, 1, 1).ok().and_then(|r| r.messages.into_iter().next());
                            (o as i64, found.map(|m| m.message.timestamp_ms as i64).unwrap_or(ts))
                        }
                        _ => (-1, -1),
                    },
                    _ => {
                        out.push(resp.with_error_code(code::UNSUPPORTED_VERSION).with_timestamp(-1).with_offset(-1));
                        continue;
                    }
                };
                out.push(resp.with_error_code(code::NONE).with_offset(offset).with_timestamp(timestamp));
            }
            topics_out.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(out));
        }
        encode(ApiKey::ListOffsets, &ListOffsetsResponse::default().with_topics(topics_out), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 1..=6 {
            let mut p = ListOffsetsPartition::default().with_partition_index(1).with_timestamp(-2);
            if v >= 4 {
                p.current_leader_epoch = 3;
            }
            let mut req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default().with_name(topic_name("t".into())).with_partitions(vec![p])]);
            if v >= 2 {
                req.isolation_level = 1;
            }
            round_trip(ApiKey::ListOffsets, &req, v, decode);
        }
    }
}
