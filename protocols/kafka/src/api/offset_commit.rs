//! OffsetCommit (key 8): a group's positions, made durable through the core
//! (`commit_offset` under the core group `kafka/<group>`, one log record per
//! partition, written concurrently so they share fsyncs).
//!
//! Members are checked as Kafka does (generation, member id, static
//! instance); generation -1 with no live group is a "simple" consumer's
//! commit and is accepted. The metadata string is not kept (OffsetFetch
//! returns ""), but one longer than Kafka's 4096-byte default
//! `offset.metadata.max.bytes` is refused as Kafka refuses it. A negative
//! offset is accepted and not stored (Kafka would store it; reading it
//! back means "no offset" either way). Versions: v2-v8 (v2-4 carry a
//! retention time, ignored: committed offsets live as long as the topic or
//! until DeleteGroups; v6 a leader epoch, not kept; v7 group.instance.id;
//! v8 flexible).

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{ApiKey, OffsetCommitResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::task::JoinSet;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{code, core_group};
use crate::wire::{Reader, WireResult};

/// Kafka's default `offset.metadata.max.bytes`.
pub(crate) const METADATA_BYTES_MAX: usize = 4096;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const UNKNOWN_SERVER_ERROR: i16 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitPartition {
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetCommit {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub topics: Vec<(String, Vec<CommitPartition>)>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<OffsetCommit> {
    let group_id = r.string(flexible)?;
    let generation_id = r.i32()?;
    let member_id = r.string(flexible)?;
    let group_instance_id = if version >= 7 { r.nullable_string(flexible)? } else { None };
    if (2..=4).contains(&version) {
        r.i64()?; // retention_time_ms
    }
    let topics = r.array_of(flexible, |r| {
        let name = r.string(flexible)?;
        let partitions = r.array_of(flexible, |r| {
            let partition = r.i32()?;
            let offset = r.i64()?;
            if version >= 6 {
                r.i32()?; // committed_leader_epoch
            }
            let metadata = r.nullable_string(flexible)?;
            r.tagged_fields(flexible)?;
            Ok(CommitPartition { partition, offset, metadata })
        })?;
        r.tagged_fields(flexible)?;
        Ok((name, partitions))
    })?;
    r.tagged_fields(flexible)?;
    Ok(OffsetCommit { group_id, generation_id, member_id, group_instance_id, topics })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let c = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let group_error = if c.group_id.is_empty() {
            code::INVALID_GROUP_ID
        } else {
            session.shared.groups.check_commit(&c.group_id, &c.member_id, c.group_instance_id.as_deref(), c.generation_id)
        };
        let store = &session.shared.store;
        let core = core_group(&c.group_id);
        // (topic index, partition index) -> error; commits run concurrently.
        let mut errors: Vec<Vec<i16>> = c.topics.iter().map(|(_, ps)| vec![group_error; ps.len()]).collect();
        if group_error == code::NONE {
            let mut commits = JoinSet::new();
            for (t, (topic, partitions)) in c.topics.iter().enumerate() {
                for (p, part) in partitions.iter().enumerate() {
                    let queue = u32::try_from(part.partition).ok().and_then(|n| store.queue_id(&polymq::topic::partition_queue(topic, n)));
                    errors[t][p] = match queue {
                        None => UNKNOWN_TOPIC_OR_PARTITION,
                        Some(_) if part.metadata.as_ref().is_some_and(|m| m.len() > METADATA_BYTES_MAX) => OFFSET_METADATA_TOO_LARGE,
                        Some(_) if part.offset < 0 => code::NONE,
                        Some(id) => {
                            let (store, core, offset) = (store.clone(), core.clone(), part.offset as u64);
                            commits.spawn(async move { (t, p, store.commit_offset(&core, id, offset).await) });
                            code::NONE
                        }
                    };
                }
            }
            while let Some(done) = commits.join_next().await {
                if let Ok((t, p, Err(e))) = done {
                    tracing::warn!(group = %c.group_id, error = %e, "offset commit failed");
                    errors[t][p] = match e {
                        polymq::StoreError::QueueNotFound(_) => UNKNOWN_TOPIC_OR_PARTITION,
                        // As Kafka maps a failed append to __consumer_offsets:
                        // retriable, the client commits again.
                        polymq::StoreError::NoSpace => code::COORDINATOR_NOT_AVAILABLE,
                        _ => UNKNOWN_SERVER_ERROR,
                    };
                }
            }
        }
        let topics = c
            .topics
            .into_iter()
            .zip(errors)
            .map(|((name, partitions), errs)| {
                OffsetCommitResponseTopic::default().with_name(TopicName(StrBytes::from_string(name))).with_partitions(
                    partitions
                        .iter()
                        .zip(errs)
                        .map(|(p, e)| OffsetCommitResponsePartition::default().with_partition_index(p.partition).with_error_code(e))
                        .collect(),
                )
            })
            .collect();
        encode(ApiKey::OffsetCommit, &OffsetCommitResponse::default().with_topics(topics), req.version)
    })
}
