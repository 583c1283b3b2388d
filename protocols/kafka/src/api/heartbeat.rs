//! Heartbeat (key 12): keeps a member's session alive and tells it when a
//! rebalance runs (REBALANCE_IN_PROGRESS). v3 adds group.instance.id, v4
//! flexible encodings.

use kafka_protocol::messages::{ApiKey, HeartbeatResponse};

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::wire::{Reader, WireResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<Heartbeat> {
    let group_id = r.string(flexible)?;
    let generation_id = r.i32()?;
    let member_id = r.string(flexible)?;
    let group_instance_id = if version >= 3 { r.nullable_string(flexible)? } else { None };
    r.tagged_fields(flexible)?;
    Ok(Heartbeat { group_id, generation_id, member_id, group_instance_id })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let h = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let error = session.shared.groups.heartbeat(&h.group_id, &h.member_id, h.group_instance_id.as_deref(), h.generation_id);
        encode(ApiKey::Heartbeat, &HeartbeatResponse::default().with_error_code(error), req.version)
    })
}
