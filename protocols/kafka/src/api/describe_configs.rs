//! DescribeConfigs (key 32): topic resources (the configs we honour, with
//! their values and whether they were set, plus a few read-only facts) and
//! the broker resource (the settings of this listener).

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::topics::{self, code};
use crate::wire::{Reader, WireResult};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
/// Config sources (DescribeConfigs v1+).
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;
/// Config types (v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<DescribeConfigsRequest> {
    let mut req = DescribeConfigsRequest::default();
    req.resources = r.array_of(flex, |r| {
        let mut res =
            DescribeConfigsResource::default().with_resource_type(r.i8()?).with_resource_name(StrBytes::from_string(r.string(flex)?));
        res.configuration_keys = r.nullable_array(flex, |r| Ok(StrBytes::from_string(r.string(flex)?)))?;
        r.tagged_fields(flex)?;
        Ok(res)
    })?;
    req.include_synonyms = r.bool()?;
    if version >= 3 {
        req.include_documentation = r.bool()?;
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

fn config_type(name: &str) -> i8 {
    match name {
        "retention.ms" | "retention.bytes" => TYPE_LONG,
        "cleanup.policy" => TYPE_LIST,
        "max.message.bytes"
        | "min.insync.replicas"
        | "num.partitions"
        | "broker.id"
        | "default.replication.factor"
        | "message.max.bytes" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        _ => TYPE_STRING,
    }
}

fn entry(version: i16, name: &str, value: String, read_only: bool, source: i8) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_owned()))
        .with_value(Some(StrBytes::from_string(value)))
        .with_read_only(read_only)
        .with_config_source(source);
    if version >= 3 {
        e.config_type = config_type(name);
    }
    e
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let store = &session.shared.store;
        let cfg = &session.shared.config;
        let mut results = Vec::with_capacity(body.resources.len());
        for res in body.resources {
            let name = res.resource_name.to_string();
            let mut out =
                DescribeConfigsResult::default().with_resource_type(res.resource_type).with_resource_name(res.resource_name.clone());
            let entries = match res.resource_type {
                RESOURCE_TOPIC => match topics::config_of(store, &name) {
                    None => Err((code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name:?}"))),
                    Some(c) => {
                        let mut v: Vec<_> = c
                            .entries()
                            .into_iter()
                            .map(|(n, val, default)| {
                                entry(version, n, val, false, if default { SOURCE_DEFAULT } else { SOURCE_DYNAMIC_TOPIC })
                            })
                            .collect();
                        v.extend(topics::read_only_entries().into_iter().map(|(n, val)| entry(version, n, val, true, SOURCE_DEFAULT)));
                        Ok(v)
                    }
                },
                RESOURCE_BROKER if name.is_empty() || name == "0" => Ok(vec![
                    entry(version, "broker.id", "0".into(), true, SOURCE_STATIC_BROKER),
                    entry(version, "auto.create.topics.enable", cfg.auto_create_topics.to_string(), true, SOURCE_STATIC_BROKER),
                    entry(version, "num.partitions", cfg.num_partitions.to_string(), true, SOURCE_STATIC_BROKER),
                    entry(version, "default.replication.factor", "1".into(), true, SOURCE_DEFAULT),
                    entry(version, "message.max.bytes", polymq::limits::RECORD_BYTES_MAX.to_string(), true, SOURCE_DEFAULT),
                    entry(version, "log.retention.ms", "-1".into(), true, SOURCE_DEFAULT),
                ]),
                RESOURCE_BROKER => Err((code::INVALID_REQUEST, format!("the only broker is 0, not {name:?}"))),
                other => Err((code::INVALID_REQUEST, format!("resource type {other} is not served"))),
            };
            match entries {
                Ok(mut v) => {
                    // Null or empty: every config.
                    if let Some(keys) = res.configuration_keys.as_ref().filter(|k| !k.is_empty()) {
                        v.retain(|e| keys.iter().any(|k| k == &e.name));
                    }
                    out.configs = v;
                }
                Err((error, message)) => {
                    out.error_code = error;
                    out.error_message = Some(StrBytes::from_string(message));
                }
            }
            results.push(out);
        }
        encode(ApiKey::DescribeConfigs, &DescribeConfigsResponse::default().with_results(results), version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 1..=4 {
            let mut req = DescribeConfigsRequest::default().with_include_synonyms(true).with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
                DescribeConfigsResource::default().with_resource_type(4).with_resource_name(StrBytes::from_static_str("0")),
            ]);
            if v >= 3 {
                req.include_documentation = true;
            }
            round_trip(ApiKey::DescribeConfigs, &req, v, decode);
        }
    }
}
