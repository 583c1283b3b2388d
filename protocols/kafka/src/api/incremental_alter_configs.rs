//! IncrementalAlterConfigs (key 44): SET / DELETE (back to the default) of
//! retention.ms, retention.bytes, cleanup.policy on topics; APPEND /
//! SUBTRACT only make sense for cleanup.policy, whose one value is `delete`.

use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;

use super::alter_configs::alter_topic;
use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::wire::{Reader, WireResult};

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

pub(crate) fn decode(r: &mut Reader, _version: i16, flex: bool) -> WireResult<IncrementalAlterConfigsRequest> {
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = r.array_of(flex, |r| {
        let mut res =
            AlterConfigsResource::default().with_resource_type(r.i8()?).with_resource_name(StrBytes::from_string(r.string(flex)?));
        res.configs = r.array_of(flex, |r| {
            let c = AlterableConfig::default()
                .with_name(StrBytes::from_string(r.string(flex)?))
                .with_config_operation(r.i8()?)
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

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let mut out = Vec::with_capacity(body.resources.len());
        for res in body.resources {
            let outcome = alter_topic(session, res.resource_type, &res.resource_name, body.validate_only, |c| {
                for e in &res.configs {
                    match (e.config_operation, &*e.name) {
                        (SET, name) => c.set(name, e.value.as_deref())?,
                        (DELETE, name) => c.set(name, None)?,
                        (APPEND | SUBTRACT, "cleanup.policy") if e.value.as_deref().map(str::trim) == Some("delete") => {
                            if e.config_operation == SUBTRACT {
                                return Err("cleanup.policy cannot be empty: delete is the only policy".into());
                            }
                        }
                        (APPEND | SUBTRACT, name) => return Err(format!("{name}: APPEND / SUBTRACT only apply to cleanup.policy=delete")),
                        (op, _) => return Err(format!("unknown config operation {op}")),
                    }
                }
                Ok(())
            })
            .await;
            let mut r =
                AlterConfigsResourceResponse::default().with_resource_type(res.resource_type).with_resource_name(res.resource_name.clone());
            if let Err(e) = outcome {
                r.error_code = e.code;
                r.error_message = Some(StrBytes::from_string(e.message));
            }
            out.push(r);
        }
        encode(ApiKey::IncrementalAlterConfigs, &IncrementalAlterConfigsResponse::default().with_responses(out), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=1 {
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t"))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("5"))),
                    AlterableConfig::default().with_name(StrBytes::from_static_str("retention.bytes")).with_config_operation(1),
                ])]);
            round_trip(ApiKey::IncrementalAlterConfigs, &req, v, decode);
        }
    }
}
