//! Kafka end-to-end: hand-built requests (kafka-protocol's client side) over
//! a real socket to an in-process polymq server, decoded responses.

mod kafka_common;

use anyhow::Result;
use kafka_common::TestBroker;
use kafka_protocol::messages::ApiVersionsRequest;

#[tokio::test]
async fn api_versions_lists_the_served_apis() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let resp = c.send(&ApiVersionsRequest::default(), 0).await?;
    assert_eq!(resp.error_code, 0);
    assert!(resp.api_keys.iter().any(|k| k.api_key == 18));
    Ok(())
}
