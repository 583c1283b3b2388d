//! CreatePartitions (key 37): grows a topic to `count` partitions, the new
//! ones with partition 0's options. Shrinking is refused (INVALID_PARTITIONS),
//! as in Kafka.

use kafka_protocol::messages::create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, topic_name, HandlerFuture, Request};
use crate::connection::Session;
use crate::topics::{self, code, TopicError};
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, _version: i16, flex: bool) -> WireResult<CreatePartitionsRequest> {
    let mut req = CreatePartitionsRequest::default();
    req.topics = r.array_of(flex, |r| {
        let mut t = CreatePartitionsTopic::default().with_name(topic_name(r.string(flex)?)).with_count(r.i32()?);
        t.assignments = r.nullable_array(flex, |r| {
            let a = CreatePartitionsAssignment::default().with_broker_ids(r.array_of(flex, |r| Ok(BrokerId(r.i32()?)))?);
            r.tagged_fields(flex)?;
            Ok(a)
        })?;
        r.tagged_fields(flex)?;
        Ok(t)
    })?;
    req.timeout_ms = r.i32()?;
    req.validate_only = r.bool()?;
    r.tagged_fields(flex)?;
    Ok(req)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let mut out = Vec::with_capacity(body.topics.len());
        for t in body.topics {
            let name = t.name.0.to_string();
            let existing = topics::partitions(store, &name).len();
            let outcome = if existing == 0 {
                Err(TopicError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}")))
            } else if t.count < 0 || t.count as usize <= existing {
                Err(TopicError::new(code::INVALID_PARTITIONS, format!("topic {name:?} has {existing} partitions; the count can only grow")))
            } else if body.validate_only {
                Ok(())
            } else {
                topics::grow(store, &name, t.count as u32).await
            };
            let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
            if let Err(e) = outcome {
                r.error_code = e.code;
                r.error_message = Some(StrBytes::from_string(e.message));
            }
            out.push(r);
        }
        encode(ApiKey::CreatePartitions, &CreatePartitionsResponse::default().with_results(out), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=3 {
            let t = CreatePartitionsTopic::default()
                .with_name(topic_name("t".into()))
                .with_count(4)
                .with_assignments(Some(vec![CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(0)])]));
            let req = CreatePartitionsRequest::default()
                .with_topics(vec![t, CreatePartitionsTopic::default().with_name(topic_name("u".into())).with_count(2)])
                .with_timeout_ms(100)
                .with_validate_only(true);
            round_trip(ApiKey::CreatePartitions, &req, v, decode);
        }
    }
}
