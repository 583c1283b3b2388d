//! DeleteTopics (key 20): deletes every partition queue of each topic (the
//! highest partition first). Lookup by topic id is not served: topics have
//! no ids here (Kafka's zero id).

use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{ApiKey, DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{encode, topic_name, HandlerFuture, Reply, Request};
use crate::connection::Session;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<DeleteTopicsRequest> {
    let mut req = DeleteTopicsRequest::default();
    if version >= 6 {
        req.topics = r.array_of(flex, |r| {
            let t =
                DeleteTopicState::default().with_name(r.nullable_string(flex)?.map(topic_name)).with_topic_id(Uuid::from_bytes(r.uuid()?));
            r.tagged_fields(flex)?;
            Ok(t)
        })?;
    } else {
        req.topic_names = r.array_of(flex, |r| Ok(topic_name(r.string(flex)?)))?;
    }
    req.timeout_ms = r.i32()?;
    r.tagged_fields(flex)?;
    Ok(req)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
            body.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()
        } else {
            body.topic_names.into_iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (name, id) in wanted {
            let mut r = DeletableTopicResult::default().with_name(name.clone().map(topic_name));
            if version >= 6 {
                r.topic_id = id;
            }
            let error = match name {
                None => (code::UNKNOWN_TOPIC_OR_PARTITION, "topic ids are not served".to_owned()),
                Some(name) => match topics::delete(store, &name).await {
                    Ok(true) => (code::NONE, String::new()),
                    Ok(false) => (code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}")),
                    Err(e) => (e.code, e.message),
                },
            };
            r.error_code = error.0;
            if version >= 5 && error.0 != code::NONE {
                r.error_message = Some(StrBytes::from_string(error.1));
            }
            out.push(r);
        }
        let resp = DeleteTopicsResponse::default().with_responses(out);
        if version >= 1 {
            return encode(ApiKey::DeleteTopics, &resp, version);
        }
        // v0 (librdkafka's admin API needs it advertised; kafka-protocol
        // encodes v1+): v1 without the leading throttle time.
        match encode(ApiKey::DeleteTopics, &resp, 1)? {
            Reply::Body(b) => Ok(Reply::Body(b.slice(4..))),
            other => Ok(other),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 1..=6 {
            // v0 requests are v1's layout.
            let mut req = DeleteTopicsRequest::default().with_timeout_ms(3000);
            if v >= 6 {
                req.topics = vec![DeleteTopicState::default().with_name(Some(topic_name("a".into()))).with_topic_id(Uuid::from_u128(9))];
            } else {
                req.topic_names = vec![topic_name("a".into()), topic_name("b".into())];
            }
            round_trip(ApiKey::DeleteTopics, &req, v, decode);
        }
    }
}
