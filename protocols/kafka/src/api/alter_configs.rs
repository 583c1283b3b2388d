//! AlterConfigs (key 33): replaces a topic's configs (those not named go
//! back to their defaults, as in Kafka). Honoured: retention.ms,
//! retention.bytes, cleanup.policy=delete; anything else is INVALID_CONFIG.
//! Broker configs are static (INVALID_REQUEST).

use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse, ApiKey};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::topics::{self, code, TopicConfig, TopicError};
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, _version: i16, flex: bool) -> WireResult<AlterConfigsRequest> {
    let mut req = AlterConfigsRequest::default();
    req.resources = r.array_of(flex, |r| {
        let mut res =
            AlterConfigsResource::default().with_resource_type(r.i8()?).with_resource_name(StrBytes::from_string(r.string(flex)?));
        res.configs = r.array_of(flex, |r| {
            let c = AlterableConfig::default()
                .with_name(StrBytes::from_string(r.string(flex)?))
                .with_value(r.nullable_string(flex)?.map(StrBytes::from_string));
            r.tagged_fields(flex)?;
            Ok(c)
        })?;
        r.tagged_fields(flex)?;
        Ok(res)
    })?;
    req.validate_only = r.bool()?;
    r.tagged_fields(flex)?;
    Ok(req)
}

/// Applies a resource change to a topic (or only checks it); shared with
/// IncrementalAlterConfigs.
pub(crate) async fn alter_topic(
    session: &Session,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut TopicConfig) -> Result<(), String>,
) -> Result<(), TopicError> {
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return Err(TopicError::new(code::INVALID_REQUEST, "broker configs are static in polymq (set them in its config)"))
        }
        other => return Err(TopicError::new(code::INVALID_REQUEST, format!("resource type {other} is not served"))),
    }
    let store = &session.shared.store;
    let Some(mut config) = topics::config_of(store, name) else {
        return Err(TopicError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}")));
    };
    change(&mut config).map_err(|m| TopicError::new(code::INVALID_CONFIG, m))?;
    if validate_only {
        return Ok(());
    }
    topics::alter(store, name, config).await
}

pub(crate) fn result(resource_type: i8, name: StrBytes, outcome: Result<(), TopicError>) -> AlterConfigsResourceResponse {
    let mut r = AlterConfigsResourceResponse::default().with_resource_type(resource_type).with_resource_name(name);
    if let Err(e) = outcome {
        r.error_code = e.code;
        r.error_message = Some(StrBytes::from_string(e.message));
    }
    r
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let mut out = Vec::with_capacity(body.resources.len());
        for res in body.resources {
            let outcome = alter_topic(session, res.resource_type, &res.resource_name, body.validate_only, |c| {
                *c = TopicConfig::default();
                for e in &res.configs {
                    c.set(&e.name, e.value.as_deref())?;
                }
                Ok(())
            })
            .await;
            out.push(result(res.resource_type, res.resource_name.clone(), outcome));
        }
        encode(ApiKey::AlterConfigs, &AlterConfigsResponse::default().with_responses(out), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=2 {
            let req = AlterConfigsRequest::default().with_validate_only(true).with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t"))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("5"))),
                    AlterableConfig::default().with_name(StrBytes::from_static_str("retention.bytes")),
                ])]);
            round_trip(ApiKey::AlterConfigs, &req, v, decode);
        }
    }
}
