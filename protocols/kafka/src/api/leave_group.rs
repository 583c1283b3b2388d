//! LeaveGroup (key 13): members leave at once instead of waiting for their
//! session to expire. v0-2 name one member; v3+ a batch of members (by
//! member id, or by group.instance.id for static members), answered one by
//! one; v4 flexible; v5 a reason per member (ignored).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::code;
use crate::wire::{Reader, WireResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaveGroup {
    pub group_id: String,
    /// (member id, group.instance.id)
    pub members: Vec<(String, Option<String>)>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<LeaveGroup> {
    let group_id = r.string(flexible)?;
    let members = if version <= 2 {
        vec![(r.string(flexible)?, None)]
    } else {
        r.array_of(flexible, |r| {
            let member_id = r.string(flexible)?;
            let instance_id = r.nullable_string(flexible)?;
            if version >= 5 {
                r.nullable_string(flexible)?; // reason
            }
            r.tagged_fields(flexible)?;
            Ok((member_id, instance_id))
        })?
    };
    r.tagged_fields(flexible)?;
    Ok(LeaveGroup { group_id, members })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let l = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let errors = session.shared.groups.leave(&l.group_id, &l.members);
        let mut resp = LeaveGroupResponse::default();
        if req.version <= 2 {
            resp.error_code = errors.first().copied().unwrap_or(code::NONE);
        } else {
            resp.members = l
                .members
                .into_iter()
                .zip(errors)
                .map(|((member_id, instance_id), error)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_group_instance_id(instance_id.map(StrBytes::from_string))
                        .with_error_code(error)
                })
                .collect();
        }
        encode(ApiKey::LeaveGroup, &resp, req.version)
    })
}
