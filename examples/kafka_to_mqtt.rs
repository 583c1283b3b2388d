//! Kafka in -> MQTT out. Against a running `polymq serve`:
//!
//! ```text
//! cargo run -p polymq-broker --example kafka_to_mqtt
//! ```
//!
//! Subscribes over MQTT to `sensors/#`, produces a Kafka record to topic
//! `sensors` with key `sensors/dev7/cmd`, and prints what the MQTT
//! subscriber receives: the record under the topic its key names.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let mut kafka = common::Kafka::connect().await?;
    kafka.create_topic("sensors").await?;

    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("example-commands", common::host(), 1883), 10);
    client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
    let mut produced = false;
    loop {
        let ev = match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => bail!("MQTT: {e}"),
            Err(_) => bail!("nothing arrived over MQTT within 10 s"),
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !produced => {
                let offset = kafka.produce("sensors", "sensors/dev7/cmd", b"reboot", &[("content-type", "text/plain")]).await?;
                println!("Kafka: produced to sensors at offset {offset}, key sensors/dev7/cmd");
                produced = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                let ct = p.properties.and_then(|p| p.content_type).unwrap_or_default();
                println!("MQTT: {} {} (content type {ct})", String::from_utf8_lossy(&p.topic), String::from_utf8_lossy(&p.payload));
                return Ok(());
            }
            _ => {}
        }
    }
}
