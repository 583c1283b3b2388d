//! DescribeCluster (key 60): one broker (id 0, the advertised address), which
//! is also the controller; the stable cluster id Metadata reports.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use super::metadata::{host_port, BROKER_ID, CLUSTER_ID};
use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<DescribeClusterRequest> {
    let mut req = DescribeClusterRequest::default().with_include_cluster_authorized_operations(r.bool()?);
    if version >= 1 {
        req.endpoint_type = r.i8()?;
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let (host, port) = host_port(&session.advertised);
        let broker =
            DescribeClusterBroker::default().with_broker_id(BrokerId(BROKER_ID)).with_host(StrBytes::from_string(host)).with_port(port);
        let resp = DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_static_str(CLUSTER_ID))
            .with_controller_id(BrokerId(BROKER_ID))
            .with_brokers(vec![broker]);
        encode(ApiKey::DescribeCluster, &resp, version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        round_trip(ApiKey::DescribeCluster, &DescribeClusterRequest::default().with_include_cluster_authorized_operations(true), 0, decode);
        round_trip(ApiKey::DescribeCluster, &DescribeClusterRequest::default().with_endpoint_type(1), 1, decode);
    }
}
