//! End-to-end tests of MQTT 5 sessions, delivery and errors with rumqttc's v5
//! client against a real in-process polymq server over real sockets (or the
//! broker named by `POLYMQ_TEST_MQTT_ADDR`, see `mqtt_common`). MQTT 5
//! properties are in `mqtt_v5_properties.rs`.

mod mqtt_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_common::raw::{self, RawClient};
use mqtt_common::v5::{
    options, server_disconnect_reason, topic_of, Client, ConnectReturnCode, DisconnectReasonCode, LastWill, LastWillProperties, Publish,
    QoS,
};
use mqtt_common::{auth_config, small_packets_config, Profile, TestBroker, AUTH_PASSWORD, AUTH_USER, QUIET, SMALL_PACKET_BYTES, WAIT};
use polymq_mqtt::MqttConfig;

async fn broker() -> Result<TestBroker> {
    TestBroker::start(MqttConfig::default()).await
}

async fn connect(broker: &TestBroker, name: &str) -> Result<Client> {
    Client::connect(options(broker, name)).await
}

/// clean_start = false with a session expiry interval.
async fn connect_session(broker: &TestBroker, name: &str, expiry_secs: u32) -> Result<Client> {
    let mut opts = options(broker, name);
    opts.set_clean_start(false).set_session_expiry_interval(Some(expiry_secs));
    Client::connect(opts).await
}

fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

async fn roundtrip(qos: QoS) -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("qos/roundtrip");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, qos).await?;
    let mut publisher = connect(&broker, "pub").await?;
    let payload = binary_payload(3000);
    publisher.publish(&topic, qos, false, payload.clone()).await?;

    let got = sub.recv().await?;
    ensure!(topic_of(&got) == topic, "topic {:?}, expected {topic:?}", topic_of(&got));
    ensure!(got.payload[..] == payload[..], "payload differs: {} bytes received, {} sent", got.payload.len(), payload.len());
    ensure!(got.qos == qos, "delivered at {:?}, expected {qos:?}", got.qos);
    ensure!(!got.retain, "a live publish must not carry the retain flag");
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_publish_and_deliver() -> Result<()> {
    roundtrip(QoS::AtMostOnce).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publish_and_deliver() -> Result<()> {
    roundtrip(QoS::AtLeastOnce).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publish_and_deliver() -> Result<()> {
    roundtrip(QoS::ExactlyOnce).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_lower_of_publish_and_subscription() -> Result<()> {
    let broker = broker().await?;
    let (low, high) = (broker.topic("qos/low-sub"), broker.topic("qos/high-sub"));
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&low, QoS::AtLeastOnce).await?;
    sub.subscribe(&high, QoS::ExactlyOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&low, QoS::ExactlyOnce, false, "2 to a QoS 1 subscription").await?;
    let got = sub.recv().await?;
    ensure!(got.qos == QoS::AtLeastOnce, "QoS 2 publish to a QoS 1 subscription delivered at {:?}", got.qos);
    publisher.publish(&high, QoS::AtMostOnce, false, "0 to a QoS 2 subscription").await?;
    let got = sub.recv().await?;
    ensure!(got.qos == QoS::AtMostOnce, "QoS 0 publish to a QoS 2 subscription delivered at {:?}", got.qos);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_order_from_one_publisher_is_preserved() -> Result<()> {
    const COUNT: usize = 200;
    let broker = broker().await?;
    let topic = broker.topic("order");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..COUNT {
        publisher.publish_nowait(&topic, QoS::AtLeastOnce, false, format!("{i}"), None).await?;
    }
    for _ in 0..COUNT {
        publisher.wait_published(QoS::AtLeastOnce).await?;
    }
    for i in 0..COUNT {
        let got = sub.recv().await?;
        ensure!(text(&got) == i.to_string(), "message #{i} has payload {:?}", text(&got));
    }
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_on_subscribe_also_to_wildcards() -> Result<()> {
    let broker = broker().await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&broker.topic("a/b/c"), QoS::AtLeastOnce, true, "abc").await?;
    publisher.publish(&broker.topic("a/x/d"), QoS::AtLeastOnce, true, "axd").await?;

    for (filter, expected) in [("a/b/c", &["abc"][..]), ("a/+/c", &["abc"][..]), ("a/#", &["abc", "axd"][..])] {
        let mut sub = connect(&broker, &format!("sub{}", filter.len())).await?;
        sub.subscribe(&broker.topic(filter), QoS::AtLeastOnce).await?;
        let mut got = BTreeSet::new();
        for _ in expected {
            let p = sub.recv().await?;
            ensure!(p.retain, "retained message on {} delivered to a new {filter} subscription without the retain flag", topic_of(&p));
            got.insert(text(&p));
        }
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        ensure!(got == want, "subscribe {filter}: retained {got:?}, expected {want:?}");
        sub.expect_no_publish(QUIET).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_replaced_then_cleared_by_an_empty_payload() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("retain/replace");
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "first").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "second").await?;
    let mut sub = connect(&broker, "sub1").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let p = sub.recv().await?;
    ensure!(p.retain && text(&p) == "second", "got retain={} payload={:?}, expected the second retained message", p.retain, text(&p));
    sub.expect_no_publish(QUIET).await?;

    publisher.publish(&topic, QoS::AtLeastOnce, true, Vec::new()).await?;
    let mut sub = connect(&broker, "sub2").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_survives_broker_restart() -> Result<()> {
    let Some(mut broker) = TestBroker::start_restartable(MqttConfig::default(), "v5 retained_message_survives_broker_restart").await?
    else {
        return Ok(());
    };
    let topic = broker.topic("retain/durable");
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "kept").await?;
    publisher.disconnect().await?;
    broker.restart().await?;
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let p = sub.recv().await?;
    ensure!(p.retain && text(&p) == "kept", "after restart: retain={} payload={:?}", p.retain, text(&p));
    Ok(())
}

// ---------------------------------------------------------------------------
// Will
// ---------------------------------------------------------------------------

/// A client with a will on `will_topic`; `delay_secs` is its Will Delay
/// Interval. The session outlives the connection by 60 s, so only the delay
/// (not the end of the session) decides when a delayed will goes out.
async fn will_client(broker: &TestBroker, will_topic: &str, delay_secs: Option<u32>) -> Result<Client> {
    let mut opts = options(broker, "dying");
    let props = LastWillProperties {
        delay_interval: delay_secs,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    opts.set_last_will(LastWill::new(will_topic, "it died", QoS::AtLeastOnce, false, Some(props)));
    opts.set_clean_start(false).set_session_expiry_interval(Some(60));
    Client::connect(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_connection_drops_without_disconnect() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/abnormal");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic, None).await?;
    watcher.expect_no_publish(QUIET).await?;
    dying.kill().await;
    let p = watcher.recv().await?;
    ensure!(topic_of(&p) == will_topic && text(&p) == "it died", "unexpected will {p:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_a_normal_disconnect() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/normal");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic, None).await?;
    dying.disconnect().await?;
    watcher.expect_no_publish(Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_will_is_not_published_if_the_client_reconnects_within_the_delay() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/delay-reconnect");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic, Some(3)).await?;
    dying.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Same client id, resuming the session, before the 3 s delay ran out.
    let back = connect_session(&broker, "dying", 60).await?;
    ensure!(back.connack.session_present, "the session of the dropped connection was not kept");
    watcher.expect_no_publish(Duration::from_secs(4)).await.context("will published although the client came back in time")?;
    drop(back);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_will_is_published_after_the_delay() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/delay");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic, Some(2)).await?;
    dying.kill().await;
    let dropped = Instant::now();
    watcher.expect_no_publish(Duration::from_millis(1200)).await.context("will published before its 2 s delay")?;
    let p = watcher.recv().await?;
    let waited = dropped.elapsed();
    ensure!(text(&p) == "it died", "will payload {:?}", text(&p));
    ensure!(waited >= Duration::from_millis(1800), "will published {waited:?} after the drop; the delay is 2 s");
    ensure!(waited <= Duration::from_secs(5), "will published only {waited:?} after the drop; the delay is 2 s");
    Ok(())
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_receives_what_was_published_while_offline() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("persist/offline");
    let mut sub = connect_session(&broker, "sub", 300).await?;
    ensure!(!sub.connack.session_present, "first connect of a new client id reported session_present");
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;

    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..5 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("offline {i}")).await?;
    }

    let mut sub = connect_session(&broker, "sub", 300).await?;
    ensure!(sub.connack.session_present, "CONNACK of the reconnect has session_present = false");
    for i in 0..5 {
        let p = sub.recv().await?;
        ensure!(text(&p) == format!("offline {i}"), "message {i}: got {:?}", text(&p));
        ensure!(p.qos == QoS::AtLeastOnce, "queued message delivered at {:?}", p.qos);
    }
    sub.expect_no_publish(QUIET).await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "live").await?;
    let p = sub.recv().await?;
    ensure!(text(&p) == "live", "got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_broker_restart() -> Result<()> {
    let Some(mut broker) = TestBroker::start_restartable(MqttConfig::default(), "v5 persistent_session_survives_broker_restart").await?
    else {
        return Ok(());
    };
    let topic = broker.topic("persist/restart");
    let mut sub = connect_session(&broker, "sub", 3600).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..3 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("queued {i}")).await?;
    }
    publisher.disconnect().await?;

    broker.restart().await?;

    let mut sub = connect_session(&broker, "sub", 3600).await?;
    ensure!(sub.connack.session_present, "session_present = false after a restart");
    for i in 0..3 {
        let p = sub.recv().await?;
        ensure!(text(&p) == format!("queued {i}"), "message {i}: got {:?}", text(&p));
    }
    sub.expect_no_publish(QUIET).await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "after restart").await?;
    let p = sub.recv().await?;
    ensure!(text(&p) == "after restart", "got {:?}", text(&p));
    Ok(())
}

/// QoS 1 messages delivered but never acknowledged are sent again, with DUP,
/// when the session resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_redelivered_when_the_session_resumes() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("persist/unacked");
    let mut opts = options(&broker, "sub");
    opts.set_clean_start(false).set_session_expiry_interval(Some(300)).set_manual_acks(true);
    let mut sub = Client::connect(opts.clone()).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "never acked").await?;
    let first = sub.recv().await?;
    ensure!(text(&first) == "never acked" && !first.dup, "first delivery {first:?}");
    sub.kill().await;

    let mut sub = Client::connect(opts).await?;
    ensure!(sub.connack.session_present, "session_present = false on resume");
    let again = sub.recv().await?;
    ensure!(text(&again) == "never acked", "redelivered payload {:?}", text(&again));
    ensure!(again.dup, "a redelivered QoS 1 message must have DUP set [MQTT-4.4.0-1]");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_gone_on_reconnect() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("expiry/session");
    let mut sub = connect_session(&broker, "sub", 1).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "for an expiring session").await?;

    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut sub = connect_session(&broker, "sub", 1).await?;
    ensure!(!sub.connack.session_present, "session with expiry 1 s still present after 3 s");
    sub.expect_no_publish(QUIET).await?;
    // No subscription survived either.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "after expiry").await?;
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_the_stored_session() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("clean");
    let mut sub = connect_session(&broker, "sub", 300).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "for the old session").await?;

    let mut opts = options(&broker, "sub");
    opts.set_clean_start(true).set_session_expiry_interval(Some(300));
    let mut clean = Client::connect(opts).await?;
    ensure!(!clean.connack.session_present, "clean_start = true answered with session_present = true");
    clean.expect_no_publish(QUIET).await?;
    clean.disconnect().await?;

    // The new (empty) session is what resumes: no subscription, nothing queued.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "nobody subscribed").await?;
    let mut again = connect_session(&broker, "sub", 300).await?;
    ensure!(again.connack.session_present, "the session created by the clean start was not kept (expiry 300)");
    again.expect_no_publish(QUIET).await
}

// ---------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------

/// Everything `client` receives until it is quiet for `quiet`.
async fn drain(client: &mut Client, quiet: Duration) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Ok(p) = client.recv_within(quiet).await {
        got.push(p);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_exactly_one_member() -> Result<()> {
    const COUNT: usize = 20;
    let broker = broker().await?;
    let topic = broker.topic("jobs");
    let shared = format!("$share/workers/{topic}");
    let mut a = connect(&broker, "a").await?;
    let mut b = connect(&broker, "b").await?;
    a.subscribe(&shared, QoS::AtLeastOnce).await?;
    b.subscribe(&shared, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..COUNT {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("job {i}")).await?;
    }

    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    while to_a.len() + to_b.len() < COUNT && Instant::now() < deadline {
        to_a.extend(drain(&mut a, Duration::from_millis(200)).await.iter().map(text));
        to_b.extend(drain(&mut b, Duration::from_millis(200)).await.iter().map(text));
    }
    // Anything extra (a duplicate) shows up within the quiet period.
    to_a.extend(drain(&mut a, QUIET).await.iter().map(text));
    to_b.extend(drain(&mut b, QUIET).await.iter().map(text));
    eprintln!("member a got {}, member b got {}", to_a.len(), to_b.len());

    let all: Vec<String> = to_a.iter().chain(&to_b).cloned().collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    ensure!(all.len() == distinct.len(), "a message went to more than one member (or twice): a={to_a:?} b={to_b:?}");
    let want: BTreeSet<String> = (0..COUNT).map(|i| format!("job {i}")).collect();
    let got: BTreeSet<String> = all.into_iter().collect();
    ensure!(got == want, "missing: {:?}", want.difference(&got).collect::<Vec<_>>());
    Ok(())
}

/// A member that disconnects holding unacknowledged QoS 1 messages: its
/// session ends (clean start, no expiry), so those go to the other member
/// (MQTT 5 section 4.8.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_gives_a_departed_members_unacked_messages_to_another_member() -> Result<()> {
    const COUNT: usize = 5;
    let broker = broker().await?;
    let topic = broker.topic("jobs");
    let shared = format!("$share/workers/{topic}");
    let mut opts = options(&broker, "hoarder");
    opts.set_manual_acks(true);
    let mut hoarder = Client::connect(opts).await?;
    hoarder.subscribe(&shared, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..COUNT {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("job {i}")).await?;
    }
    // The only member gets them all, and never acks.
    for _ in 0..COUNT {
        hoarder.recv().await?;
    }

    let mut worker = connect(&broker, "worker").await?;
    worker.subscribe(&shared, QoS::AtLeastOnce).await?;
    hoarder.kill().await;

    let mut got = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < COUNT && Instant::now() < deadline {
        if let Ok(p) = worker.recv_within(deadline.saturating_duration_since(Instant::now())).await {
            got.insert(text(&p));
        }
    }
    let want: BTreeSet<String> = (0..COUNT).map(|i| format!("job {i}")).collect();
    ensure!(got == want, "the other member got {got:?} of the departed member's unacked {want:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Takeover, auth, limits, bad input
// ---------------------------------------------------------------------------

/// What a rumqttc user sees when another connection takes over its client id.
/// (rumqttc 0.25 cannot parse a DISCONNECT whose Remaining Length is 1, i.e. a
/// reason code without the property length, which the spec allows: it waits
/// for more bytes and then reports ConnectionAborted. The raw test below
/// checks the wire.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_gets_the_old_connection_disconnect_session_taken_over() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("takeover");
    let mut old = connect(&broker, "same").await?;
    let mut new = connect(&broker, "same").await?;
    let error = old.closed(WAIT).await?;
    let reason = server_disconnect_reason(&error);
    ensure!(reason == Some(DisconnectReasonCode::SessionTakenOver), "old connection ended with {error:?}, expected DISCONNECT 0x8E");
    new.subscribe(&topic, QoS::AtLeastOnce).await?;
    new.publish(&topic, QoS::AtLeastOnce, false, "still here").await?;
    let p = new.recv().await?;
    ensure!(text(&p) == "still here", "got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_old_connection_gets_disconnect_0x8e_on_the_wire() -> Result<()> {
    let broker = broker().await?;
    let mut old = RawClient::connect(&broker).await?;
    old.handshake(&raw::connect(5, &broker.client_id("same"), 60, None)).await?;
    let mut new = RawClient::connect(&broker).await?;
    new.handshake(&raw::connect(5, &broker.client_id("same"), 60, None)).await?;
    let packets = old.until_closed(WAIT).await?;
    let reasons: Vec<u8> =
        packets.iter().filter(|(h, _)| *h == raw::DISCONNECT).map(|(_, body)| body.first().copied().unwrap_or(0)).collect();
    ensure!(reasons == [0x8E], "before closing, the broker sent the old connection {packets:?}; expected one DISCONNECT 0x8E");
    Ok(())
}

/// Draining the server (what SIGTERM does) tells every v5 session why it
/// closes, idle or subscribed alike: DISCONNECT 0x8B (Server shutting down).
/// Sessions learn of the drain through the session registry, not through a
/// shutdown future of their own; this is what would catch one left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_sends_disconnect_0x8b_to_every_session() -> Result<()> {
    let Some(mut broker) =
        TestBroker::start_restartable(MqttConfig::default(), "v5 server_shutdown_sends_disconnect_0x8b_to_every_session").await?
    else {
        return Ok(());
    };
    let mut idle = RawClient::connect(&broker).await?;
    idle.handshake(&raw::connect(5, &broker.client_id("idle"), 60, None)).await?;
    let mut subscriber = connect(&broker, "subscriber").await?;
    subscriber.subscribe(&broker.topic("drain"), QoS::AtLeastOnce).await?;

    broker.restart().await?;

    let packets = idle.until_closed(WAIT).await?;
    let reasons: Vec<u8> =
        packets.iter().filter(|(h, _)| *h == raw::DISCONNECT).map(|(_, body)| body.first().copied().unwrap_or(0)).collect();
    ensure!(reasons == [0x8B], "before closing, the broker sent the idle connection {packets:?}; expected one DISCONNECT 0x8B");
    let error = subscriber.closed(WAIT).await?;
    let reason = server_disconnect_reason(&error);
    ensure!(reason == Some(DisconnectReasonCode::ServerShuttingDown), "subscriber ended with {error:?}, expected DISCONNECT 0x8B");
    Ok(())
}

/// The new connection of a persistent session picks up where the old one was:
/// same subscriptions, session_present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_a_persistent_session_keeps_its_subscriptions() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("takeover/persistent");
    let mut old = connect_session(&broker, "device", 300).await?;
    old.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut new = connect_session(&broker, "device", 300).await?;
    ensure!(new.connack.session_present, "taking over a live persistent session: session_present = false");
    old.closed(WAIT).await.context("old connection still open after the takeover")?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "to the session").await?;
    let p = new.recv().await?;
    ensure!(text(&p) == "to the session", "got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_gets_an_assigned_client_identifier() -> Result<()> {
    let broker = broker().await?;
    let mut opts = options(&broker, "unused");
    opts.set_client_id(String::new());
    let mut client = Client::connect(opts).await?;
    let assigned = client.connack.properties.as_ref().and_then(|p| p.assigned_client_identifier.clone());
    ensure!(
        assigned.as_deref().is_some_and(|id| !id.is_empty()),
        "CONNACK to an empty client id has Assigned Client Identifier {assigned:?}"
    );
    let topic = broker.topic("anonymous-id");
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    client.publish(&topic, QoS::AtLeastOnce, false, "works").await?;
    ensure!(text(&client.recv().await?) == "works", "no echo");
    Ok(())
}

/// The client's Maximum Packet Size: a message too large for it is skipped
/// as if sent [MQTT-3.1.2-25]; the connection stays and later messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_the_clients_maximum_packet_size_is_skipped() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("client-max-packet");
    let mut opts = options(&broker, "small");
    opts.set_max_packet_size(Some(1024));
    let mut small = Client::connect(opts).await?;
    small.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, vec![b'x'; 4096]).await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "fits").await?;
    let p = small.recv().await?;
    ensure!(text(&p) == "fits", "got a {}-byte payload; the 4096-byte message should have been skipped", p.payload.len());
    small.expect_no_publish(QUIET).await
}

/// Clients of both versions share one topic space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_and_v5_clients_exchange_messages() -> Result<()> {
    use mqtt_common::v311;
    let broker = broker().await?;
    let topic = broker.topic("mixed");
    let mut new = connect(&broker, "v5").await?;
    new.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut old = v311::Client::connect(v311::options(&broker, "v311")).await?;
    old.subscribe(&topic, v311::QoS::AtLeastOnce).await?;

    old.publish(&topic, v311::QoS::AtLeastOnce, false, "from 3.1.1").await?;
    let p = new.recv().await?;
    ensure!(text(&p) == "from 3.1.1" && p.qos == QoS::AtLeastOnce, "v5 got {p:?}");
    let p = old.recv().await?;
    ensure!(p.payload[..] == b"from 3.1.1"[..], "v3.1.1 echo {p:?}");

    let props = mqtt_common::v5::PublishProperties { user_properties: vec![("k".into(), "v".into())], ..mqtt_common::v5::empty_props() };
    new.publish_props(&topic, QoS::AtLeastOnce, false, "from 5", Some(props)).await?;
    let p = old.recv().await?;
    ensure!(p.payload[..] == b"from 5"[..] && p.qos == v311::QoS::AtLeastOnce, "v3.1.1 got {p:?}");
    Ok(())
}

/// A Topic Alias above the maximum the broker announced gets DISCONNECT 0x94
/// Topic Alias Invalid. Alias 0 is not allowed either [MQTT-3.3.2-8]; the spec
/// names no reason code for it, so 0x81, 0x82 and 0x94 all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_beyond_the_maximum_gets_disconnect_0x94() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("alias/bad");
    for (alias, allowed) in [(u16::MAX, &[0x94][..]), (0u16, &[0x81, 0x82, 0x94][..])] {
        let mut bad = RawClient::connect(&broker).await?;
        bad.handshake(&raw::connect(5, &broker.client_id("bad-alias"), 60, None)).await?;
        let mut props = vec![0x23]; // Topic Alias
        props.extend_from_slice(&alias.to_be_bytes());
        bad.send(&raw::publish_props(0x30, &topic, &props, b"x")).await?;
        let packets = bad.until_closed(WAIT).await?;
        let reasons: Vec<u8> =
            packets.iter().filter(|(h, _)| *h == raw::DISCONNECT).map(|(_, body)| body.first().copied().unwrap_or(0)).collect();
        ensure!(
            reasons.len() == 1 && allowed.contains(&reasons[0]),
            "topic alias {alias}: the broker sent {packets:?} before closing; expected one DISCONNECT with a reason in {allowed:02x?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wrong_password_gets_0x86_and_right_password_works() -> Result<()> {
    let test = "auth_wrong_password_gets_0x86_and_right_password_works";
    let Some(broker) = TestBroker::start_profile(auth_config(), Profile::Auth, test).await? else { return Ok(()) };
    let mut opts = options(&broker, "bad");
    opts.set_credentials(AUTH_USER, "wrong");
    let code = Client::connect_refused(opts).await?;
    ensure!(
        code == ConnectReturnCode::BadUserNamePassword,
        "wrong password: CONNACK reason {code:?}, expected 0x86 Bad User Name or Password"
    );

    let code = Client::connect_refused(options(&broker, "anon")).await?;
    ensure!(
        matches!(code, ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        "anonymous connect with allow_anonymous=false: CONNACK reason {code:?}"
    );

    let mut opts = options(&broker, "good");
    opts.set_credentials(AUTH_USER, AUTH_PASSWORD);
    let mut good = Client::connect(opts).await?;
    let topic = broker.topic("auth");
    good.subscribe(&topic, QoS::AtLeastOnce).await?;
    good.publish(&topic, QoS::AtLeastOnce, false, "authenticated").await?;
    let p = good.recv().await?;
    ensure!(text(&p) == "authenticated", "got {:?}", text(&p));
    Ok(())
}

/// rumqttc will not send a packet larger than the CONNACK's Maximum Packet
/// Size, so the oversize PUBLISH goes out on a raw socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_publish_gets_disconnect_0x95_and_others_keep_working() -> Result<()> {
    let test = "oversize_publish_gets_disconnect_0x95_and_others_keep_working";
    let Some(broker) = TestBroker::start_profile(small_packets_config(), Profile::SmallPackets, test).await? else { return Ok(()) };
    let topic = broker.topic("big");
    let mut bystander = connect(&broker, "bystander").await?;
    let advertised = bystander.connack.properties.as_ref().and_then(|p| p.max_packet_size);
    ensure!(advertised == Some(SMALL_PACKET_BYTES), "CONNACK Maximum Packet Size {advertised:?}, expected {SMALL_PACKET_BYTES}");
    bystander.subscribe(&topic, QoS::AtLeastOnce).await?;

    let mut big = RawClient::connect(&broker).await?;
    big.handshake(&raw::connect(5, &broker.client_id("big"), 60, None)).await?;
    big.send(&raw::publish(5, 0x30, &topic, &vec![b'x'; 2 * SMALL_PACKET_BYTES as usize])).await?;
    let packets = big.until_closed(WAIT).await?;
    let reasons: Vec<u8> =
        packets.iter().filter(|(h, _)| *h == raw::DISCONNECT).map(|(_, body)| body.first().copied().unwrap_or(0)).collect();
    ensure!(reasons == [0x95], "before closing, the broker sent {packets:?}; expected one DISCONNECT with reason 0x95");
    bystander.expect_no_publish(QUIET).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "small").await?;
    let p = bystander.recv().await?;
    ensure!(text(&p) == "small", "got {:?}", text(&p));
    Ok(())
}

/// A PUBLISH with both QoS bits set is a Malformed Packet [MQTT-3.3.1-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_publish_gets_disconnect_0x81_and_others_keep_working() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("malformed");
    let mut bystander = connect(&broker, "bystander").await?;
    bystander.subscribe(&topic, QoS::AtLeastOnce).await?;

    let mut bad = RawClient::connect(&broker).await?;
    bad.handshake(&raw::connect(5, &broker.client_id("bad"), 60, None)).await?;
    bad.send(&raw::publish(5, 0x36, &topic, b"qos 3")).await?;
    let packets = bad.until_closed(WAIT).await?;
    let reasons: Vec<u8> =
        packets.iter().filter(|(h, _)| *h == raw::DISCONNECT).map(|(_, body)| body.first().copied().unwrap_or(0)).collect();
    ensure!(reasons == [0x81], "before closing, the broker sent {packets:?}; expected one DISCONNECT with reason 0x81");
    bystander.expect_no_publish(QUIET).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "fine").await?;
    let p = bystander.recv().await?;
    ensure!(text(&p) == "fine", "got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_closes_the_connection_and_publishes_the_will() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("keepalive/will");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;

    let mut silent = RawClient::connect(&broker).await?;
    let will = raw::Will { topic: &will_topic, payload: b"silent", qos: 1 };
    silent.handshake(&raw::connect(5, &broker.client_id("silent"), 1, Some(will))).await?;
    let start = Instant::now();
    let packets = silent.until_closed(Duration::from_secs(4)).await?;
    let waited = start.elapsed();
    // The broker may say why (0x8D Keep Alive timeout) before it closes.
    let unexpected: Vec<_> = packets.iter().filter(|(h, body)| !(*h == raw::DISCONNECT && body.first() == Some(&0x8D))).collect();
    ensure!(unexpected.is_empty(), "broker sent {unexpected:?} to the silent client");
    ensure!(waited >= Duration::from_millis(900), "closed after {waited:?}: before the keep-alive of 1 s ran out");
    ensure!(waited <= Duration::from_secs(3), "closed only after {waited:?}; 1.5 x keep-alive is 1.5 s");
    let p = watcher.recv().await?;
    ensure!(text(&p) == "silent", "will payload {:?}", text(&p));
    Ok(())
}
