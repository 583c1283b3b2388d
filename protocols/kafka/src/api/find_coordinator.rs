//! FindCoordinator (key 10): this node coordinates every group.
//!
//! v0 names one group; v1-3 add the key type; v4 batches keys
//! (`coordinator_keys`). Key type 0 (group) is answered with node 0 at the
//! connection's advertised address. Key type 1 (transaction) gets
//! COORDINATOR_NOT_AVAILABLE while polymq has no transaction coordinator
//! (transactional producers retry and then fail; idempotent ones never ask).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::code;
use crate::wire::{Reader, WireResult};

pub(crate) const KEY_TYPE_GROUP: i8 = 0;
pub(crate) const KEY_TYPE_TRANSACTION: i8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FindCoordinator {
    pub key_type: i8,
    pub keys: Vec<String>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<FindCoordinator> {
    let mut keys = Vec::new();
    if version <= 3 {
        keys.push(r.string(flexible)?);
    }
    let key_type = if version >= 1 { r.i8()? } else { KEY_TYPE_GROUP };
    if version >= 4 {
        keys = r.array_of(flexible, |r| r.string(flexible))?;
    }
    r.tagged_fields(flexible)?;
    Ok(FindCoordinator { key_type, keys })
}

/// Host and port of `host:port` (the port is validated by the config).
fn split_advertised(advertised: &str) -> (String, i32) {
    match advertised.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().unwrap_or(9092)),
        None => (advertised.to_owned(), 9092),
    }
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let decoded = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let (host, port) = split_advertised(&session.advertised);
        let error = match decoded.key_type {
            KEY_TYPE_GROUP => code::NONE,
            KEY_TYPE_TRANSACTION => code::COORDINATOR_NOT_AVAILABLE,
            _ => code::INVALID_REQUEST,
        };
        let (node, host, port) = if error == code::NONE { (0, host, port) } else { (-1, String::new(), -1) };
        let mut resp = FindCoordinatorResponse::default();
        if req.version >= 4 {
            resp.coordinators = decoded
                .keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(StrBytes::from_string(key))
                        .with_node_id(BrokerId(node))
                        .with_host(StrBytes::from_string(host.clone()))
                        .with_port(port)
                        .with_error_code(error)
                })
                .collect();
        } else {
            resp = resp.with_error_code(error).with_node_id(BrokerId(node)).with_host(StrBytes::from_string(host)).with_port(port);
        }
        encode(ApiKey::FindCoordinator, &resp, req.version)
    })
}
