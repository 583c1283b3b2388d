//! OffsetFetch (key 9): a group's committed offsets, -1 where there is none.
//!
//! v1-v7 ask for one group (v2+: topics null means every partition the group
//! has an offset for, listed by the core's `group_offsets`); v8 batches
//! groups; v6 flexible; v7 `require_stable` (nothing is ever pending here:
//! no transactional offset commits). The metadata string is not kept: "".

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{ApiKey, GroupId, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use polymq::Store;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{code, core_group};
use crate::wire::{Reader, WireResult};

/// One group's question: `None` topics means all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchGroup {
    pub group_id: String,
    pub topics: Option<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetFetch {
    pub groups: Vec<FetchGroup>,
    pub require_stable: bool,
}

/// (topic, partitions) asked for.
pub(crate) type TopicPartitions = Vec<(String, Vec<i32>)>;

fn topics(r: &mut Reader, flexible: bool) -> WireResult<Option<TopicPartitions>> {
    r.nullable_array(flexible, |r| {
        let name = r.string(flexible)?;
        let partitions = r.array_of(flexible, |r| r.i32())?;
        r.tagged_fields(flexible)?;
        Ok((name, partitions))
    })
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<OffsetFetch> {
    let groups = if version <= 7 {
        let group_id = r.string(flexible)?;
        vec![FetchGroup { group_id, topics: topics(r, flexible)? }]
    } else {
        r.array_of(flexible, |r| {
            let group_id = r.string(flexible)?;
            let topics = topics(r, flexible)?;
            r.tagged_fields(flexible)?;
            Ok(FetchGroup { group_id, topics })
        })?
    };
    let require_stable = if version >= 7 { r.bool()? } else { false };
    r.tagged_fields(flexible)?;
    Ok(OffsetFetch { groups, require_stable })
}

/// (topic, [(partition, offset or -1)]) for one group.
fn offsets(store: &Store, group: &FetchGroup) -> Vec<(String, Vec<(i32, i64)>)> {
    let core = core_group(&group.group_id);
    match &group.topics {
        Some(topics) => topics
            .iter()
            .map(|(topic, partitions)| {
                let found = partitions
                    .iter()
                    .map(|&p| {
                        let offset = u32::try_from(p)
                            .ok()
                            .and_then(|n| store.queue_id(&polymq::topic::partition_queue(topic, n)))
                            .and_then(|id| store.committed_offset(&core, id))
                            .map_or(-1, |o| o as i64);
                        (p, offset)
                    })
                    .collect();
                (topic.clone(), found)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<(i32, i64)>> = Default::default();
            for (id, offset) in store.group_offsets(&core) {
                let Some(info) = store.queue_info(id) else { continue };
                let Some((topic, p)) = polymq::topic::parse_partition_queue(&info.name) else { continue };
                by_topic.entry(topic.to_owned()).or_default().push((p as i32, offset as i64));
            }
            by_topic
                .into_iter()
                .map(|(t, mut ps)| {
                    ps.sort_unstable();
                    (t, ps)
                })
                .collect()
        }
    }
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let f = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let empty = || Some(StrBytes::from_static_str(""));
        let mut resp = OffsetFetchResponse::default();
        if req.version <= 7 {
            let Some(group) = f.groups.first() else { return encode(ApiKey::OffsetFetch, &resp, req.version) };
            resp.topics = offsets(store, group)
                .into_iter()
                .map(|(t, ps)| {
                    OffsetFetchResponseTopic::default().with_name(TopicName(StrBytes::from_string(t))).with_partitions(
                        ps.into_iter()
                            .map(|(p, o)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_metadata(empty())
                            })
                            .collect(),
                    )
                })
                .collect();
            resp.error_code = code::NONE;
        } else {
            resp.groups = f
                .groups
                .iter()
                .map(|g| {
                    let topics = offsets(store, g)
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopics::default().with_name(TopicName(StrBytes::from_string(t))).with_partitions(
                                ps.into_iter()
                                    .map(|(p, o)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_metadata(empty())
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                    OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.group_id.clone())))
                        .with_topics(topics)
                })
                .collect();
        }
        encode(ApiKey::OffsetFetch, &resp, req.version)
    })
}
