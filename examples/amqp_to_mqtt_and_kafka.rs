//! AMQP in -> MQTT and Kafka out. Against a running `polymq serve`:
//!
//! ```text
//! cargo run -p polymq-broker --example amqp_to_mqtt_and_kafka
//! ```
//!
//! Subscribes over MQTT to `sensors/+/temp`, publishes to the AMQP exchange
//! `amq.topic` with routing key `sensors.dev9.temp`, and prints what the
//! MQTT subscriber (topic `sensors/dev9/temp`) and a Kafka consumer of topic
//! `sensors` (key `sensors/dev9/temp`) receive.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let mut kafka = common::Kafka::connect().await?;
    kafka.create_topic("sensors").await?;
    let from = kafka.end_offset("sensors").await?;

    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("example-dev9-watch", common::host(), 1883), 10);
    client.subscribe("sensors/+/temp", QoS::AtLeastOnce).await?;
    let amqp = Connection::connect(&format!("amqp://guest:guest@{}:5672/%2f", common::host()), ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let mut published = false;
    loop {
        let ev = match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => bail!("MQTT: {e}"),
            Err(_) => bail!("nothing arrived over MQTT within 10 s"),
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                let props = BasicProperties::default().with_content_type("text/plain".into());
                channel
                    .basic_publish("amq.topic".into(), "sensors.dev9.temp".into(), BasicPublishOptions::default(), b"19.0", props)
                    .await?
                    .await?;
                println!("AMQP: published to amq.topic with routing key sensors.dev9.temp");
                published = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                println!("MQTT: {} {}", String::from_utf8_lossy(&p.topic), String::from_utf8_lossy(&p.payload));
                break;
            }
            _ => {}
        }
    }
    for r in kafka.fetch("sensors", from, Duration::from_secs(5)).await? {
        println!("Kafka sensors: {}", common::show(&r));
    }
    Ok(())
}
