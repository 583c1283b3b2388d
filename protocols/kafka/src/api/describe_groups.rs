//! DescribeGroups (key 15): state, protocol and members of each group.
//!
//! A group with only committed offsets is Empty; an unknown one is Dead
//! with no error (what Kafka answers). `authorized_operations` is INT32_MIN
//! unless asked for (kafka-python cannot decode -1); when asked for, every
//! group operation is allowed (there are no ACLs): READ, DELETE, DESCRIBE.
//! v4 adds group.instance.id, v5 flexible encodings.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{ApiKey, DescribeGroupsResponse, GroupId};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{core_group, GroupState};
use crate::wire::{Reader, WireResult};

/// Kafka's AclOperation codes READ (3), DELETE (6), DESCRIBE (8) as a bit set.
pub(crate) const GROUP_OPERATIONS_ALLOWED: i32 = (1 << 3) | (1 << 6) | (1 << 8);
/// "Not requested" (Kafka's default).
pub(crate) const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescribeGroups {
    pub groups: Vec<String>,
    pub include_authorized_operations: bool,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<DescribeGroups> {
    let groups = r.array_of(flexible, |r| r.string(flexible))?;
    let include_authorized_operations = if version >= 3 { r.bool()? } else { false };
    r.tagged_fields(flexible)?;
    Ok(DescribeGroups { groups, include_authorized_operations })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let d = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let v = req.version;
        let s = |x: String| StrBytes::from_string(x);
        let groups = d
            .groups
            .into_iter()
            .map(|id| {
                let mut g = DescribedGroup::default().with_group_id(GroupId(s(id.clone())));
                match session.shared.groups.describe(&id) {
                    Some(summary) => {
                        g.group_state = StrBytes::from_static_str(summary.state.name());
                        g.protocol_type = s(summary.protocol_type);
                        g.protocol_data = s(summary.protocol);
                        g.members = summary
                            .members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_group_instance_id(if v >= 4 { m.instance_id.map(s) } else { None })
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect();
                    }
                    None => {
                        let has_offsets = !session.shared.store.group_offsets(&core_group(&id)).is_empty();
                        let state = if has_offsets { GroupState::Empty } else { GroupState::Dead };
                        g.group_state = StrBytes::from_static_str(state.name());
                    }
                }
                if v >= 3 {
                    g.authorized_operations =
                        if d.include_authorized_operations { GROUP_OPERATIONS_ALLOWED } else { AUTHORIZED_OPERATIONS_OMITTED };
                }
                g
            })
            .collect();
        encode(ApiKey::DescribeGroups, &DescribeGroupsResponse::default().with_groups(groups), v)
    })
}
