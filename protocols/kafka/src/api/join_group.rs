//! JoinGroup (key 11). The response waits for the rebalance to complete (the
//! coordinator answers through a oneshot; no lock is held while waiting).
//!
//! v1 adds the rebalance timeout (v0: the session timeout), v4 the
//! MEMBER_ID_REQUIRED handshake, v5 static membership (group.instance.id),
//! v6 flexible encodings, v7 the protocol type in the response, v8 a reason,
//! v9 `skip_assignment` in the response (always false: the leader assigns).

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ApiKey, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{code, JoinRequest, Outcome};
use crate::wire::{Reader, WireResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinGroup {
    pub group_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub reason: Option<String>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<JoinGroup> {
    let group_id = r.string(flexible)?;
    let session_timeout_ms = r.i32()?;
    let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { session_timeout_ms };
    let member_id = r.string(flexible)?;
    let group_instance_id = if version >= 5 { r.nullable_string(flexible)? } else { None };
    let protocol_type = r.string(flexible)?;
    let protocols = r.array_of(flexible, |r| {
        let name = r.string(flexible)?;
        let metadata = r.bytes(flexible)?;
        r.tagged_fields(flexible)?;
        Ok((name, metadata))
    })?;
    let reason = if version >= 8 { r.nullable_string(flexible)? } else { None };
    r.tagged_fields(flexible)?;
    Ok(JoinGroup { group_id, session_timeout_ms, rebalance_timeout_ms, member_id, group_instance_id, protocol_type, protocols, reason })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let j = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let member_id = j.member_id.clone();
        let join = JoinRequest {
            session_timeout_ms: j.session_timeout_ms,
            rebalance_timeout_ms: j.rebalance_timeout_ms,
            member_id: j.member_id,
            instance_id: j.group_instance_id,
            protocol_type: j.protocol_type,
            protocols: j.protocols,
            require_known_member: req.version >= 4,
            client_id: req.client_id.clone().unwrap_or_default(),
            client_host: format!("/{}", session.peer.ip()),
        };
        let outcome = session.shared.groups.join(&j.group_id, join);
        let answer = match outcome {
            Outcome::Ready(a) => a,
            // The coordinator dropped the waiter (the group was deleted
            // under it): the client looks the coordinator up again.
            Outcome::Wait(rx) => {
                rx.await.unwrap_or_else(|_| crate::group::JoinResponse::error(code::COORDINATOR_NOT_AVAILABLE, &member_id))
            }
        };
        let v = req.version;
        let mut resp = JoinGroupResponse::default()
            .with_error_code(answer.error)
            .with_generation_id(answer.generation)
            .with_protocol_name(Some(StrBytes::from_string(answer.protocol_name.unwrap_or_default())))
            .with_leader(StrBytes::from_string(answer.leader))
            .with_member_id(StrBytes::from_string(answer.member_id))
            .with_members(
                answer
                    .members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_group_instance_id(if v >= 5 { m.instance_id.map(StrBytes::from_string) } else { None })
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            );
        if v >= 7 {
            resp.protocol_type = answer.protocol_type.map(StrBytes::from_string);
            if answer.error != code::NONE {
                resp.protocol_name = None;
            }
        }
        encode(ApiKey::JoinGroup, &resp, v)
    })
}
