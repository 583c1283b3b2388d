//! Metadata (key 3): one broker (id 0, the advertised address), every topic
//! or the ones asked for; unknown topics are created when auto-creation is on
//! (config `kafka_auto_create_topics`, and the request allows it).

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{encode, topic_name, HandlerFuture, Request};
use crate::connection::Session;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

/// The cluster id Metadata and DescribeCluster report: one node, always the same.
pub const CLUSTER_ID: &str = "polymq-single-node";
/// Our one broker's id.
pub const BROKER_ID: i32 = 0;

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<MetadataRequest> {
    let mut req = MetadataRequest::default();
    req.topics = r.nullable_array(flex, |r| {
        let mut t = MetadataRequestTopic::default();
        if version >= 10 {
            t.topic_id = Uuid::from_bytes(r.uuid()?);
            t.name = r.nullable_string(flex)?.map(topic_name);
        } else {
            t.name = Some(topic_name(r.string(flex)?));
        }
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    req.allow_auto_topic_creation = if version >= 4 { r.bool()? } else { true };
    if (8..=10).contains(&version) {
        req.include_cluster_authorized_operations = r.bool()?;
    }
    if version >= 8 {
        req.include_topic_authorized_operations = r.bool()?;
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

/// `host:port` split for the broker list (a bare host gets Kafka's port).
pub(crate) fn host_port(advertised: &str) -> (String, i32) {
    match advertised.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().unwrap_or(9092)),
        None => (advertised.to_owned(), 9092),
    }
}

pub(crate) fn broker(advertised: &str) -> MetadataResponseBroker {
    let (host, port) = host_port(advertised);
    MetadataResponseBroker::default().with_node_id(BrokerId(BROKER_ID)).with_host(StrBytes::from_string(host)).with_port(port)
}

pub(crate) fn topic_metadata(name: &str, partitions: usize) -> MetadataResponseTopic {
    let parts = (0..partitions as i32)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(BROKER_ID))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(BROKER_ID)])
                .with_isr_nodes(vec![BrokerId(BROKER_ID)])
        })
        .collect();
    MetadataResponseTopic::default().with_name(Some(topic_name(name.to_owned()))).with_partitions(parts)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let config = &session.shared.config;
        // v0: an empty list means every topic; v1+: null does.
        let wanted = match body.topics {
            Some(t) if !(version == 0 && t.is_empty()) => Some(t),
            _ => None,
        };
        let mut topics_out = Vec::new();
        match wanted {
            None => {
                for (name, count) in polymq::topic::list(store) {
                    if topics::valid_name(&name) {
                        topics_out.push(topic_metadata(&name, count as usize));
                    }
                }
            }
            Some(wanted) => {
                for t in wanted {
                    let Some(name) = t.name else {
                        // Lookup by topic id: we assign none (Kafka's zero id).
                        topics_out.push(
                            MetadataResponseTopic::default().with_topic_id(t.topic_id).with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
                        );
                        continue;
                    };
                    let name = name.0.to_string();
                    let mut count = topics::partitions(store, &name).len();
                    let mut error = code::NONE;
                    if count == 0 {
                        if !topics::valid_name(&name) {
                            error = code::INVALID_TOPIC_EXCEPTION;
                        } else if config.auto_create_topics && body.allow_auto_topic_creation {
                            match topics::create(store, &name, config.num_partitions, Default::default()).await {
                                Ok(p) => count = p.len(),
                                Err(e) => error = e.code,
                            }
                        } else {
                            error = code::UNKNOWN_TOPIC_OR_PARTITION;
                        }
                    }
                    let mut t = topic_metadata(&name, count);
                    t.error_code = error;
                    topics_out.push(t);
                }
            }
        }
        let resp = MetadataResponse::default()
            .with_brokers(vec![broker(&session.advertised)])
            .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
            .with_controller_id(BrokerId(BROKER_ID))
            .with_topics(topics_out);
        encode(ApiKey::Metadata, &resp, version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=12 {
            let mut topic = MetadataRequestTopic::default().with_name(Some(topic_name("orders".into())));
            if v >= 10 {
                topic.topic_id = Uuid::from_u128(7);
            }
            let mut req = MetadataRequest::default().with_topics(Some(vec![topic]));
            req.allow_auto_topic_creation = v < 4 || v % 2 == 0;
            if (8..=10).contains(&v) {
                req.include_cluster_authorized_operations = true;
            }
            if v >= 8 {
                req.include_topic_authorized_operations = true;
            }
            round_trip(ApiKey::Metadata, &req, v, decode);
            if v >= 1 {
                round_trip(
                    ApiKey::Metadata,
                    &MetadataRequest::default().with_topics(None).with_allow_auto_topic_creation(v < 4),
                    v,
                    decode,
                );
            }
        }
    }
}
