//! MQTT in -> Kafka out. Against a running `polymq serve`:
//!
//! ```text
//! cargo run -p polymq-broker --example mqtt_to_kafka
//! ```
//!
//! Creates the Kafka topic `sensors`, publishes `sensors/dev42/temp` over
//! MQTT (QoS 1, with a content type and a user property), then reads it as
//! a Kafka record: key = the MQTT topic, value byte-exact, properties as
//! record headers.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let mut kafka = common::Kafka::connect().await?;
    kafka.create_topic("sensors").await?;
    let from = kafka.end_offset("sensors").await?;

    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("example-dev42", common::host(), 1883), 10);
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("unit".into(), "C".into())],
        ..PublishProperties::default()
    };
    client.publish_with_properties("sensors/dev42/temp", QoS::AtLeastOnce, false, "21.5", props).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("MQTT: {e}"),
            Err(_) => bail!("no PUBACK within 10 s"),
        }
    }
    println!("MQTT: published sensors/dev42/temp");

    for r in kafka.fetch("sensors", from, Duration::from_secs(5)).await? {
        println!("Kafka sensors: {}", common::show(&r));
    }
    Ok(())
}
