//! DeleteGroups (key 42): deletes groups without members and their
//! committed offsets (durably: one core record per group). A group with
//! members gets NON_EMPTY_GROUP; one that is neither live nor has offsets
//! GROUP_ID_NOT_FOUND. v2 flexible.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsResponse, GroupId};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{code, core_group};
use crate::wire::{Reader, WireResult};

const UNKNOWN_SERVER_ERROR: i16 = -1;

pub(crate) fn decode(r: &mut Reader, _version: i16, flexible: bool) -> WireResult<Vec<String>> {
    let groups = r.array_of(flexible, |r| r.string(flexible))?;
    r.tagged_fields(flexible)?;
    Ok(groups)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let names = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let mut results = Vec::new();
        for id in names {
            let live = session.shared.groups.describe(&id).is_some();
            let mut error = session.shared.groups.delete(&id);
            if error == code::NONE && !id.is_empty() {
                error = match session.shared.store.delete_group_offsets(&core_group(&id)).await {
                    Ok(0) if !live => code::GROUP_ID_NOT_FOUND,
                    Ok(_) => code::NONE,
                    Err(e) => {
                        tracing::warn!(group = %id, error = %e, "deleting a group's offsets failed");
                        UNKNOWN_SERVER_ERROR
                    }
                };
            } else if id.is_empty() {
                error = code::INVALID_GROUP_ID;
            }
            results.push(DeletableGroupResult::default().with_group_id(GroupId(StrBytes::from_string(id))).with_error_code(error));
        }
        encode(ApiKey::DeleteGroups, &DeleteGroupsResponse::default().with_results(results), req.version)
    })
}
