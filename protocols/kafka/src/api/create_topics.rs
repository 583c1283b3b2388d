//! CreateTopics (key 19): partitions (default `kafka_num_partitions`),
//! replication factor 1 or -1 (one node), configs retention.ms,
//! retention.bytes, cleanup.policy=delete; `validate_only` checks without
//! creating.

use kafka_protocol::messages::create_topics_request::{CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::{SOURCE_DEFAULT, SOURCE_DYNAMIC_TOPIC};
use bytes::{BufMut, BytesMut};

use super::{encode, topic_name, HandlerFuture, Reply, Request};
use crate::connection::Session;
use crate::topics::{self, code, TopicConfig, TopicError};
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<CreateTopicsRequest> {
    let mut req = CreateTopicsRequest::default();
    req.topics = r.array_of(flex, |r| {
        let mut t = CreatableTopic::default().with_name(topic_name(r.string(flex)?));
        t.num_partitions = r.i32()?;
        t.replication_factor = r.i16()?;
        t.assignments = r.array_of(flex, |r| {
            let mut a = CreatableReplicaAssignment::default().with_partition_index(r.i32()?);
            a.broker_ids = r.array_of(flex, |r| Ok(BrokerId(r.i32()?)))?;
            r.tagged_fields(flex)?;
            Ok(a)
        })?;
        t.configs = r.array_of(flex, |r| {
            let c = CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(r.string(flex)?))
                .with_value(r.nullable_string(flex)?.map(StrBytes::from_string));
            r.tagged_fields(flex)?;
            Ok(c)
        })?;
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    req.timeout_ms = r.i32()?;
    if version >= 1 {
        req.validate_only = r.bool()?;
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

/// What a topic request asks for, checked.
fn plan(t: &CreatableTopic, default_partitions: u32) -> Result<(u32, TopicConfig), TopicError> {
    let name: &str = &t.name.0;
    if !topics::valid_name(name) {
        return Err(TopicError::new(code::INVALID_TOPIC_EXCEPTION, format!("{name:?} is not a valid topic name")));
    }
    if !matches!(t.replication_factor, -1 | 1) {
        return Err(TopicError::new(code::INVALID_REPLICATION_FACTOR, "polymq is one node: replication factor must be 1 (or -1)"));
    }
    if t.assignments.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != 0)) {
        return Err(TopicError::new(39, "the only broker is 0"));
    }
    let count = match (t.num_partitions, t.assignments.len()) {
        (-1, 0) => default_partitions,
        (-1, n) => n as u32,
        (n, _) if n > 0 && n as u32 <= polymq::topic::PARTITIONS_MAX => n as u32,
        (n, _) => return Err(TopicError::new(code::INVALID_PARTITIONS, format!("{n} partitions"))),
    };
    let mut config = TopicConfig::default();
    for c in &t.configs {
        config.set(&c.name, c.value.as_deref()).map_err(|m| TopicError::new(code::INVALID_CONFIG, m))?;
    }
    Ok((count, config))
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let mut results = Vec::with_capacity(body.topics.len());
        for t in &body.topics {
            let name = t.name.0.to_string();
            let outcome = match plan(t, session.shared.config.num_partitions) {
                Err(e) => Err(e),
                Ok(_) if !topics::partitions(store, &name).is_empty() => {
                    Err(TopicError::new(code::TOPIC_ALREADY_EXISTS, format!("topic {name:?} already exists")))
                }
                Ok((count, config)) if body.validate_only => Ok((count, config)),
                Ok((count, config)) => topics::create(store, &name, count, config).await.map(|_| (count, config)),
            };
            let mut r = CreatableTopicResult::default().with_name(t.name.clone());
            match outcome {
                Ok((count, config)) => {
                    if version >= 5 {
                        r.num_partitions = count as i32;
                        r.replication_factor = 1;
                        r.configs = Some(
                            config
                                .entries()
                                .into_iter()
                                .map(|(n, v, default)| {
                                    CreatableTopicConfigs::default()
                                        .with_name(StrBytes::from_static_str(n))
                                        .with_value(Some(StrBytes::from_string(v)))
                                        .with_config_source(if default { SOURCE_DEFAULT } else { SOURCE_DYNAMIC_TOPIC })
                                })
                                .collect(),
                        );
                    }
                }
                Err(e) => {
                    r.error_code = e.code;
                    r.error_message = Some(StrBytes::from_string(e.message));
                    r.num_partitions = -1;
                    r.replication_factor = -1;
                }
            }
            results.push(r);
        }
        let resp = CreateTopicsResponse::default().with_topics(results);
        if version >= 2 {
            return encode(ApiKey::CreateTopics, &resp, version);
        }
        // v0 / v1 (librdkafka requires v0 in its range before it enables
        // its admin API; kafka-protocol encodes v2+ only): v1 is v2 without
        // the throttle time, v0 also without the error messages.
        let mut out = BytesMut::new();
        out.put_i32(resp.topics.len() as i32);
        for t in &resp.topics {
            out.put_i16(t.name.0.len() as i16);
            out.put_slice(t.name.0.as_bytes());
            out.put_i16(t.error_code);
            if version == 1 {
                match &t.error_message {
                    Some(m) => {
                        out.put_i16(m.len() as i16);
                        out.put_slice(m.as_bytes());
                    }
                    None => out.put_i16(-1),
                }
            }
        }
        Ok(Reply::Body(out.freeze()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=7 {
            let t = CreatableTopic::default()
                .with_name(topic_name("t".into()))
                .with_num_partitions(-1)
                .with_replication_factor(1)
                .with_assignments(vec![CreatableReplicaAssignment::default().with_partition_index(0).with_broker_ids(vec![BrokerId(0)])])
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("1000")))]);
            let req = CreateTopicsRequest::default().with_topics(vec![t]).with_timeout_ms(5000).with_validate_only(true);
            // kafka-protocol encodes v2+; v0 / v1 requests are v2's layout
            // (v0 without validate_only).
            let mut bytes = BytesMut::new();
            kafka_protocol::protocol::Encodable::encode(&req, &mut bytes, v.max(2)).expect("encode");
            let mut bytes = bytes.freeze();
            if v == 0 {
                bytes = bytes.slice(..bytes.len() - 1);
            }
            let got = decode(&mut Reader::new(bytes), v, v >= 5).expect("decode");
            assert_eq!(got, req.with_validate_only(v >= 1), "v{v}");
        }
    }
}
