//! SyncGroup (key 14): the leader hands in the assignments; followers wait
//! for them (the handler awaits the coordinator's oneshot).
//!
//! v3 adds group.instance.id, v4 flexible encodings, v5 the protocol type
//! and name (checked against the group's, answered back).

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{code, Outcome, SyncRequest, SyncResponse};
use crate::wire::{Reader, WireResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncGroup {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<SyncGroup> {
    let group_id = r.string(flexible)?;
    let generation_id = r.i32()?;
    let member_id = r.string(flexible)?;
    let group_instance_id = if version >= 3 { r.nullable_string(flexible)? } else { None };
    let (protocol_type, protocol_name) =
        if version >= 5 { (r.nullable_string(flexible)?, r.nullable_string(flexible)?) } else { (None, None) };
    let assignments = r.array_of(flexible, |r| {
        let member = r.string(flexible)?;
        let assignment = r.bytes(flexible)?;
        r.tagged_fields(flexible)?;
        Ok((member, assignment))
    })?;
    r.tagged_fields(flexible)?;
    Ok(SyncGroup { group_id, generation_id, member_id, group_instance_id, protocol_type, protocol_name, assignments })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let s = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let sync = SyncRequest {
            generation: s.generation_id,
            member_id: s.member_id,
            instance_id: s.group_instance_id,
            protocol_type: s.protocol_type,
            protocol_name: s.protocol_name,
            assignments: s.assignments,
        };
        let answer = match session.shared.groups.sync(&s.group_id, sync) {
            Outcome::Ready(a) => a,
            // Dropped waiter: the member was replaced or the group deleted.
            Outcome::Wait(rx) => rx.await.unwrap_or_else(|_| SyncResponse::error(code::REBALANCE_IN_PROGRESS)),
        };
        let mut resp = SyncGroupResponse::default().with_error_code(answer.error).with_assignment(answer.assignment);
        if req.version >= 5 {
            resp.protocol_type = answer.protocol_type.map(StrBytes::from_string);
            resp.protocol_name = answer.protocol_name.map(StrBytes::from_string);
        }
        encode(ApiKey::SyncGroup, &resp, req.version)
    })
}
