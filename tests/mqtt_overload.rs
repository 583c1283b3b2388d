//! MQTT under the store's memory alarm (issue 8, "Overload"): a connection
//! that publishes is not read while the alarm is on, so its further PUBLISH
//! packets wait in the socket and their PUBACKs are withheld; deliveries to
//! subscribers go on; everything resumes when the alarm clears. The alarm is
//! forced, as the AMQP (`amqp_e2e.rs`) and Kafka tests do.

mod mqtt_common;

use anyhow::{ensure, Context, Result};
use mqtt_common::v5::{options, Client, QoS};
use mqtt_common::{TestBroker, QUIET, WAIT};
use polymq_mqtt::MqttConfig;

fn text(p: &rumqttc::v5::mqttbytes::v5::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_alarm_withholds_publishers_acks_and_keeps_delivering() -> Result<()> {
    let broker = TestBroker::start_restartable(MqttConfig::default(), "the memory alarm test").await?;
    let Some(broker) = broker else { return Ok(()) };
    let alarm = std::sync::Arc::clone(broker.store().context("in-process broker")?.memory_alarm());
    let live = broker.topic("pressure/live");
    let backlog = broker.topic("pressure/backlog");

    // A persistent session with a backlog, offline.
    let mut opts = options(&broker, "offline");
    opts.set_clean_start(false).set_session_expiry_interval(Some(300));
    let mut offline = Client::connect(opts.clone()).await?;
    offline.subscribe(&backlog, QoS::AtLeastOnce).await?;
    offline.disconnect().await?;

    let mut sub = Client::connect(options(&broker, "sub")).await?;
    sub.subscribe(&live, QoS::AtLeastOnce).await?;
    let mut publisher = Client::connect(options(&broker, "pub")).await?;
    for i in 0..3 {
        publisher.publish(&backlog, QoS::AtLeastOnce, false, format!("queued {i}")).await?;
    }
    publisher.publish(&live, QoS::AtLeastOnce, false, "before").await?;
    ensure!(text(&sub.recv().await?) == "before");

    alarm.force(Some(true));
    // Let the connection see the alarm before it publishes again.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    publisher.publish_nowait(&live, QoS::AtLeastOnce, false, "during", None).await?;
    let acked = tokio::time::timeout(QUIET, publisher.wait_published(QoS::AtLeastOnce)).await;
    ensure!(acked.is_err(), "a publish was acknowledged while the memory alarm was on: {acked:?}");
    // Not read, so not stored and not delivered either.
    sub.expect_no_publish(QUIET).await?;

    // Subscribers keep receiving: the offline session's backlog drains.
    let mut resumed = Client::connect(opts).await?;
    ensure!(resumed.connack.session_present, "session_present = false");
    for i in 0..3 {
        let p = resumed.recv().await?;
        ensure!(text(&p) == format!("queued {i}"), "backlog message {i}: {:?}", text(&p));
    }

    alarm.force(Some(false));
    let p = sub.recv_within(WAIT).await?;
    ensure!(text(&p) == "during", "got {:?}", text(&p));
    // The withheld PUBACK came too; the connection publishes normally again.
    publisher.publish(&live, QoS::AtLeastOnce, false, "after").await?;
    ensure!(text(&sub.recv().await?) == "after");
    Ok(())
}

/// A connection that only subscribes is never blocked: it is not watched
/// until it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_under_the_memory_alarm_subscribes_and_acknowledges() -> Result<()> {
    let broker = TestBroker::start_restartable(MqttConfig::default(), "the memory alarm test").await?;
    let Some(broker) = broker else { return Ok(()) };
    let alarm = std::sync::Arc::clone(broker.store().context("in-process broker")?.memory_alarm());
    let topic = broker.topic("pressure/sub");
    let mut publisher = Client::connect(options(&broker, "pub")).await?;
    let mut sub = Client::connect(options(&broker, "sub")).await?;
    alarm.force(Some(true));
    // SUBSCRIBE is read and answered while the alarm is on.
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    // A first publish is read (the connection is not yet a publisher) and
    // stored; then the publisher is blocked.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "first").await?;
    ensure!(text(&sub.recv().await?) == "first");
    publisher.publish_nowait(&topic, QoS::AtLeastOnce, false, "second", None).await?;
    ensure!(tokio::time::timeout(QUIET, publisher.wait_published(QoS::AtLeastOnce)).await.is_err(), "second acknowledged");
    alarm.force(None);
    ensure!(text(&sub.recv().await?) == "second");
    Ok(())
}
