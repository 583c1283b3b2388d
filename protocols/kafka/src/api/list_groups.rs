//! ListGroups (key 16): live groups (with members) and groups that only have
//! committed offsets (shown Empty, protocol type "": the coordinator no
//! longer remembers it). v3 flexible; v4 a state filter; v5 a type filter
//! (every group here is "classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ApiKey, GroupId, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::group::{GroupState, CORE_GROUP_PREFIX};
use crate::wire::{Reader, WireResult};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ListGroups {
    pub states_filter: Vec<String>,
    pub types_filter: Vec<String>,
}

pub(crate) fn decode(r: &mut Reader, version: i16, flexible: bool) -> WireResult<ListGroups> {
    let states_filter = if version >= 4 { r.array_of(flexible, |r| r.string(flexible))? } else { Vec::new() };
    let types_filter = if version >= 5 { r.array_of(flexible, |r| r.string(flexible))? } else { Vec::new() };
    r.tagged_fields(flexible)?;
    Ok(ListGroups { states_filter, types_filter })
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let l = decode(&mut req.body, req.version, req.flexible).map_err(|e| req.malformed(e))?;
        let mut groups: Vec<(String, String, GroupState)> =
            session.shared.groups.list().into_iter().map(|g| (g.group_id, g.protocol_type, g.state)).collect();
        for core in session.shared.store.offset_groups(CORE_GROUP_PREFIX) {
            let id = &core[CORE_GROUP_PREFIX.len()..];
            if !groups.iter().any(|(g, _, _)| g == id) {
                groups.push((id.to_owned(), String::new(), GroupState::Empty));
            }
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let state_ok = |s: GroupState| l.states_filter.is_empty() || l.states_filter.iter().any(|f| f.eq_ignore_ascii_case(s.name()));
        let type_ok = l.types_filter.is_empty() || l.types_filter.iter().any(|t| t.eq_ignore_ascii_case("classic"));
        let listed = groups
            .into_iter()
            .filter(|(_, _, s)| type_ok && state_ok(*s))
            .map(|(id, protocol_type, state)| {
                let mut g = ListedGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(id)))
                    .with_protocol_type(StrBytes::from_string(protocol_type));
                if req.version >= 4 {
                    g.group_state = StrBytes::from_static_str(state.name());
                }
                if req.version >= 5 {
                    g.group_type = StrBytes::from_static_str("classic");
                }
                g
            })
            .collect();
        encode(ApiKey::ListGroups, &ListGroupsResponse::default().with_groups(listed), req.version)
    })
}
