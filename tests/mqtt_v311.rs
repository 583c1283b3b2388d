//! End-to-end tests of MQTT 3.1.1 with rumqttc against a real in-process
//! polymq server over real sockets (or the broker named by
//! `POLYMQ_TEST_MQTT_ADDR`, see `mqtt_common`).

mod mqtt_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use mqtt_common::raw::{self, RawClient};
use mqtt_common::v311::{options, Client, ConnectReturnCode, LastWill, QoS};
use mqtt_common::{auth_config, small_packets_config, Profile, TestBroker, AUTH_PASSWORD, AUTH_USER, QUIET, SMALL_PACKET_BYTES, WAIT};
use polymq_mqtt::MqttConfig;

async fn broker() -> Result<TestBroker> {
    TestBroker::start(MqttConfig::default()).await
}

async fn connect(broker: &TestBroker, name: &str) -> Result<Client> {
    Client::connect(options(broker, name)).await
}

/// A persistent-session (clean_session = false) client.
async fn connect_persistent(broker: &TestBroker, name: &str) -> Result<Client> {
    let mut opts = options(broker, name);
    opts.set_clean_session(false);
    Client::connect(opts).await
}

/// Every byte value, several times: payloads must arrive byte-exact.
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
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
    ensure!(got.topic == topic, "topic {:?}, expected {topic:?}", got.topic);
    ensure!(got.payload[..] == payload[..], "payload differs: {} bytes received, {} sent", got.payload.len(), payload.len());
    ensure!(got.qos == qos, "delivered at {:?}, expected {qos:?}", got.qos);
    ensure!(!got.retain, "a live publish must not carry the retain flag");
    sub.expect_no_publish(QUIET).await?; // exactly once, even at QoS 1 on a clean run
    Ok(())
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

/// Delivered QoS is min(publish QoS, granted QoS).
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

/// QoS 1 messages from one publisher arrive in the order published, even
/// when the publisher pipelines them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_order_from_one_publisher_is_preserved() -> Result<()> {
    const COUNT: usize = 200;
    let broker = broker().await?;
    let topic = broker.topic("order");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..COUNT {
        publisher.publish_nowait(&topic, QoS::AtLeastOnce, false, format!("{i}")).await?;
    }
    for _ in 0..COUNT {
        publisher.wait_published(QoS::AtLeastOnce).await?;
    }
    for i in 0..COUNT {
        let got = sub.recv().await?;
        let text = String::from_utf8_lossy(&got.payload).into_owned();
        ensure!(text == i.to_string(), "message #{i} has payload {text:?}");
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
            ensure!(p.retain, "retained message on {} delivered to a new {filter} subscription without the retain flag", p.topic);
            got.insert(String::from_utf8_lossy(&p.payload).into_owned());
        }
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        ensure!(got == want, "subscribe {filter}: retained {got:?}, expected {want:?}");
        sub.expect_no_publish(QUIET).await?;
    }

    // To a subscription that already exists, 3.1.1 forwards a retained
    // publish with RETAIN 0 [MQTT-3.3.1-9].
    let mut live = connect(&broker, "live").await?;
    live.subscribe(&broker.topic("live"), QoS::AtLeastOnce).await?;
    publisher.publish(&broker.topic("live"), QoS::AtLeastOnce, true, "now").await?;
    let p = live.recv().await?;
    ensure!(!p.retain, "a retained publish forwarded to an existing subscription must have RETAIN 0 in 3.1.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_replaced_by_a_new_one() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("retain/replace");
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "first").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "second").await?;
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let p = sub.recv().await?;
    ensure!(
        p.retain && p.payload[..] == b"second"[..],
        "got retain={} payload={:?}, expected the second retained message",
        p.retain,
        p.payload
    );
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_cleared_by_an_empty_payload() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("retain/clear");
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "soon gone").await?;
    // Proves the retained message was there before the clear.
    let mut before = connect(&broker, "before").await?;
    before.subscribe(&topic, QoS::AtLeastOnce).await?;
    before.recv().await?;

    publisher.publish(&topic, QoS::AtLeastOnce, true, Vec::new()).await?;
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_survives_broker_restart() -> Result<()> {
    let Some(mut broker) = TestBroker::start_restartable(MqttConfig::default(), "retained_message_survives_broker_restart").await? else {
        return Ok(());
    };
    let topic = broker.topic("retain/durable");
    let payload = binary_payload(500);
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, payload.clone()).await?;
    publisher.disconnect().await?;

    broker.restart().await?;

    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let p = sub.recv().await?;
    ensure!(p.retain, "retained message delivered without the retain flag after restart");
    ensure!(p.payload[..] == payload[..], "retained payload changed across the restart");
    Ok(())
}

async fn will_client(broker: &TestBroker, will_topic: &str) -> Result<Client> {
    let mut opts = options(broker, "dying");
    opts.set_last_will(LastWill::new(will_topic, "it died", QoS::AtLeastOnce, false));
    Client::connect(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_connection_drops_without_disconnect() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/abnormal");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic).await?;
    watcher.expect_no_publish(QUIET).await?; // not before the drop
    dying.kill().await;
    let p = watcher.recv().await?;
    ensure!(p.topic == will_topic && p.payload[..] == b"it died"[..], "unexpected will {p:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_a_normal_disconnect() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("will/normal");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;
    let dying = will_client(&broker, &will_topic).await?;
    dying.disconnect().await?;
    watcher.expect_no_publish(Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_receives_what_was_published_while_offline() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("persist/offline");
    let mut sub = connect_persistent(&broker, "sub").await?;
    // Make sure no session from an earlier run is around: a first connect
    // finds none (the client id is unique per run).
    ensure!(!sub.connack.session_present, "first connect of a new client id reported session_present");
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;

    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..5 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("offline {i}")).await?;
    }

    let mut sub = connect_persistent(&broker, "sub").await?;
    ensure!(sub.connack.session_present, "CONNACK of the reconnect has session_present = false");
    for i in 0..5 {
        let p = sub.recv().await?;
        ensure!(p.payload[..] == format!("offline {i}").as_bytes()[..], "message {i}: got {:?}", p.payload);
        ensure!(p.qos == QoS::AtLeastOnce, "queued message delivered at {:?}", p.qos);
    }
    sub.expect_no_publish(QUIET).await?;

    // The subscription is still there for live messages too.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "live").await?;
    let p = sub.recv().await?;
    ensure!(p.payload[..] == b"live"[..], "got {:?}", p.payload);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_broker_restart() -> Result<()> {
    let Some(mut broker) = TestBroker::start_restartable(MqttConfig::default(), "persistent_session_survives_broker_restart").await? else {
        return Ok(());
    };
    let topic = broker.topic("persist/restart");
    let mut sub = connect_persistent(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..3 {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("queued {i}")).await?;
    }
    publisher.disconnect().await?;

    broker.restart().await?;

    let mut sub = connect_persistent(&broker, "sub").await?;
    ensure!(sub.connack.session_present, "session_present = false after a restart");
    for i in 0..3 {
        let p = sub.recv().await?;
        ensure!(p.payload[..] == format!("queued {i}").as_bytes()[..], "message {i}: got {:?}", p.payload);
    }
    sub.expect_no_publish(QUIET).await?;
    // The subscription came back too.
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "after restart").await?;
    let p = sub.recv().await?;
    ensure!(p.payload[..] == b"after restart"[..], "got {:?}", p.payload);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_the_stored_session() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("clean");
    let mut sub = connect_persistent(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "for the old session").await?;

    // Clean session: starts fresh, the queued message is gone with the session.
    let mut clean = connect(&broker, "sub").await?;
    ensure!(!clean.connack.session_present, "clean_session = true answered with session_present = true");
    clean.expect_no_publish(QUIET).await?;
    clean.disconnect().await?;

    // And nothing was kept for a persistent reconnect either: no session, no subscription.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "nobody subscribed").await?;
    let mut again = connect_persistent(&broker, "sub").await?;
    ensure!(!again.connack.session_present, "the session survived a clean-session connect");
    again.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wrong_password_is_refused_with_code_4_and_right_password_works() -> Result<()> {
    let test = "auth_wrong_password_is_refused_with_code_4_and_right_password_works";
    let Some(broker) = TestBroker::start_profile(auth_config(), Profile::Auth, test).await? else { return Ok(()) };
    let mut opts = options(&broker, "bad");
    opts.set_credentials(AUTH_USER, "wrong");
    let code = Client::connect_refused(opts).await?;
    // 0x04: bad user name or password.
    ensure!(code == ConnectReturnCode::BadUserNamePassword, "wrong password: CONNACK code {code:?}, expected BadUserNamePassword (4)");

    let code = Client::connect_refused(options(&broker, "anon")).await?;
    ensure!(
        matches!(code, ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        "anonymous connect with allow_anonymous=false: CONNACK code {code:?}"
    );

    let mut opts = options(&broker, "good");
    opts.set_credentials(AUTH_USER, AUTH_PASSWORD);
    let mut good = Client::connect(opts).await?;
    let topic = broker.topic("auth");
    good.subscribe(&topic, QoS::AtLeastOnce).await?;
    good.publish(&topic, QoS::AtLeastOnce, false, "authenticated").await?;
    let p = good.recv().await?;
    ensure!(p.payload[..] == b"authenticated"[..], "got {:?}", p.payload);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_publish_disconnects_only_that_client() -> Result<()> {
    let test = "oversize_publish_disconnects_only_that_client";
    let Some(broker) = TestBroker::start_profile(small_packets_config(), Profile::SmallPackets, test).await? else { return Ok(()) };
    let topic = broker.topic("big");
    let mut bystander = connect(&broker, "bystander").await?;
    bystander.subscribe(&topic, QoS::AtLeastOnce).await?;

    let mut big = connect(&broker, "big").await?;
    big.publish_nowait(&topic, QoS::AtMostOnce, false, vec![b'x'; 2 * SMALL_PACKET_BYTES as usize]).await?;
    let error = big.closed(WAIT).await?;
    eprintln!("oversize v3.1.1 publisher's connection ended with: {error:?}");
    bystander.expect_no_publish(QUIET).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "small").await?;
    let p = bystander.recv().await?;
    ensure!(p.payload[..] == b"small"[..], "got {:?}", p.payload);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_takes_over_and_closes_the_old_connection() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("takeover");
    let mut old = connect(&broker, "same").await?;
    let mut new = connect(&broker, "same").await?;
    let error = old.closed(WAIT).await?;
    eprintln!("old v3.1.1 connection ended with: {error:?}");
    new.subscribe(&topic, QoS::AtLeastOnce).await?;
    new.publish(&topic, QoS::AtLeastOnce, false, "still here").await?;
    let p = new.recv().await?;
    ensure!(p.payload[..] == b"still here"[..], "got {:?}", p.payload);
    Ok(())
}

/// A client that says keep-alive 1 s and then goes silent is cut off after
/// 1.5 x keep-alive, and that counts as an abnormal close: its will goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_closes_the_connection_and_publishes_the_will() -> Result<()> {
    let broker = broker().await?;
    let will_topic = broker.topic("keepalive/will");
    let mut watcher = connect(&broker, "watcher").await?;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await?;

    let mut silent = RawClient::connect(&broker).await?;
    let will = raw::Will { topic: &will_topic, payload: b"silent", qos: 1 };
    silent.handshake(&raw::connect(4, &broker.client_id("silent"), 1, Some(will))).await?;
    let start = Instant::now();
    let before_close = silent.until_closed(Duration::from_secs(4)).await?;
    let waited = start.elapsed();
    ensure!(before_close.is_empty(), "broker sent {before_close:?} to the silent client");
    ensure!(waited >= Duration::from_millis(900), "closed after {waited:?}: before the keep-alive of 1 s ran out");
    ensure!(waited <= Duration::from_secs(3), "closed only after {waited:?}; 1.5 x keep-alive is 1.5 s");

    let p = watcher.recv().await?;
    ensure!(p.payload[..] == b"silent"[..], "will payload {:?}", p.payload);
    Ok(())
}

/// The other side of keep-alive: a client that pings (rumqttc does, every
/// keep-alive period when idle) stays connected well past 1.5 x keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_client_with_short_keep_alive_stays_connected() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("keepalive/pinging");
    let mut opts = options(&broker, "pinger");
    opts.set_keep_alive(Duration::from_secs(1));
    let mut pinger = Client::connect(opts).await?;
    pinger.subscribe(&topic, QoS::AtLeastOnce).await?;
    if let Ok(error) = pinger.closed(Duration::from_secs(4)).await {
        anyhow::bail!("a client pinging every second was disconnected: {error:?}");
    }
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "still connected").await?;
    let p = pinger.recv().await?;
    ensure!(p.payload[..] == b"still connected"[..], "got {:?}", p.payload);
    Ok(())
}

/// A PUBLISH with both QoS bits set is malformed [MQTT-3.3.1-4]: the broker
/// closes that connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_publish_closes_only_that_connection() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("malformed");
    let mut bystander = connect(&broker, "bystander").await?;
    bystander.subscribe(&topic, QoS::AtLeastOnce).await?;

    let mut bad = RawClient::connect(&broker).await?;
    bad.handshake(&raw::connect(4, &broker.client_id("bad"), 60, None)).await?;
    bad.send(&raw::publish(4, 0x36, &topic, b"qos 3")).await?;
    let before_close = bad.until_closed(WAIT).await?;
    ensure!(before_close.is_empty(), "3.1.1 has no error packet; broker sent {before_close:?}");
    bystander.expect_no_publish(QUIET).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "fine").await?;
    let p = bystander.recv().await?;
    ensure!(p.payload[..] == b"fine"[..], "got {:?}", p.payload);
    Ok(())
}

/// QoS 2 is exactly once even when the client sends the PUBLISH again (DUP)
/// before PUBREL, as it does after a lost PUBREC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publish_resent_before_pubrel_is_delivered_once() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("qos2/dup");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::ExactlyOnce).await?;

    let mut publisher = RawClient::connect(&broker).await?;
    publisher.handshake(&raw::connect(4, &broker.client_id("raw-pub"), 60, None)).await?;
    for first in [0x34, 0x3C] {
        // QoS 2, packet id 1; then the same with DUP.
        publisher.send(&raw::publish(4, first, &topic, b"once")).await?;
        let read = publisher.read(WAIT).await?;
        ensure!(read == raw::Read::Packet(raw::PUBREC, vec![0, 1]), "expected PUBREC 1, got {read:?}");
    }
    publisher.send(&raw::packet(raw::PUBREL, &[0, 1])).await?;
    let read = publisher.read(WAIT).await?;
    ensure!(read == raw::Read::Packet(raw::PUBCOMP, vec![0, 1]), "expected PUBCOMP 1, got {read:?}");

    let p = sub.recv().await?;
    ensure!(p.payload[..] == b"once"[..] && p.qos == QoS::ExactlyOnce, "got {p:?}");
    sub.expect_no_publish(QUIET).await.context("QoS 2 message delivered twice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_by_level_and_do_not_match_dollar_topics() -> Result<()> {
    let broker = broker().await?;
    let mut plus = connect(&broker, "plus").await?;
    plus.subscribe(&broker.topic("w/+/temp"), QoS::AtLeastOnce).await?;
    let mut hash = connect(&broker, "hash").await?;
    hash.subscribe(&broker.topic("w/#"), QoS::AtLeastOnce).await?;
    // "#" and "+/..." at the top level must not match topics starting with "$" [MQTT-4.7.2-1].
    let mut top = connect(&broker, "top").await?;
    top.subscribe("#", QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;

    for (name, payload) in [("w/kitchen/temp", "1"), ("w/kitchen/sub/temp", "2"), ("w", "3"), ("w/hall/humidity", "4")] {
        publisher.publish(&broker.topic(name), QoS::AtLeastOnce, false, payload).await?;
    }
    let dollar = format!("${}", broker.topic("sys"));
    let mut exact = connect(&broker, "exact").await?;
    exact.subscribe(&dollar, QoS::AtLeastOnce).await?;
    publisher.publish(&dollar, QoS::AtLeastOnce, false, "dollar").await?;
    // Routed: a subscription naming it gets it.
    let p = exact.recv().await?;
    ensure!(p.payload[..] == b"dollar"[..], "{dollar} subscription got {:?}", p.payload);

    let p = plus.recv().await?;
    ensure!(p.payload[..] == b"1"[..], "w/+/temp got {:?} first", p.payload);
    plus.expect_no_publish(QUIET).await.context("w/+/temp matched more than one level")?;

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8_lossy(&hash.recv().await?.payload).into_owned());
    }
    // "w/#" also matches the parent "w" [MQTT-4.7.1-2].
    ensure!(got == ["1", "2", "3", "4"], "w/# got {got:?}");
    hash.expect_no_publish(QUIET).await?;

    // "#" sees the test's own topics (and perhaps other tests' on a shared
    // broker) but never the "$" one.
    while let Ok(p) = top.recv_within(QUIET).await {
        ensure!(!p.topic.starts_with('$'), "# matched {}", p.topic);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("unsub");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "before").await?;
    sub.recv().await?;
    sub.unsubscribe(&topic).await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "after").await?;
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_with_clean_session_is_accepted() -> Result<()> {
    let broker = broker().await?;
    let mut opts = options(&broker, "unused");
    opts.set_client_id(String::new());
    let mut client = Client::connect(opts).await?;
    let topic = broker.topic("anonymous-id");
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    client.publish(&topic, QoS::AtLeastOnce, false, "works").await?;
    ensure!(client.recv().await?.payload[..] == b"works"[..], "no echo");
    Ok(())
}

/// 3.1.1 has no empty-id persistent session: CONNACK code 2 [MQTT-3.1.3-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_with_persistent_session_is_refused_with_code_2() -> Result<()> {
    // rumqttc refuses (panics) to send this CONNECT, so it goes out raw.
    let broker = broker().await?;
    let mut client = RawClient::connect(&broker).await?;
    client.send(&raw::connect_with(4, "", 60, false, None)).await?;
    let read = client.read(WAIT).await?;
    ensure!(read == raw::Read::Packet(raw::CONNACK, vec![0, 2]), "expected CONNACK with code 2 (identifier rejected), got {read:?}");
    let after = client.until_closed(WAIT).await?;
    ensure!(after.is_empty(), "after the refusal the broker sent {after:?}");
    Ok(())
}

/// A client may send SUBSCRIBE right behind CONNECT, without waiting for
/// CONNACK (paho does). When both arrive in one read, the SUBSCRIBE is already
/// buffered and the socket never turns readable for it again: it must still be
/// answered at once, not when the next bytes (a PINGREQ a keep-alive later)
/// arrive. (Found as a 60 s SUBACK stall in the kill -9 compat test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sent_in_the_same_write_as_connect_is_answered_at_once() -> Result<()> {
    let broker = broker().await?;
    let id = broker.client_id("same-write");
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60];
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    let mut bytes = vec![0x10];
    raw::remaining_length(connect.len(), &mut bytes);
    bytes.extend_from_slice(&connect);
    let filter = broker.topic("same-write/#");
    let mut subscribe = vec![0x00, 0x07];
    subscribe.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    subscribe.extend_from_slice(filter.as_bytes());
    subscribe.push(1);
    bytes.push(0x82);
    raw::remaining_length(subscribe.len(), &mut bytes);
    bytes.extend_from_slice(&subscribe);

    let mut client = RawClient::connect(&broker).await?;
    client.send(&bytes).await?;
    match client.read(WAIT).await? {
        raw::Read::Packet(raw::CONNACK, body) => ensure!(body == [0, 0], "CONNACK {body:?}"),
        other => anyhow::bail!("expected CONNACK, got {other:?}"),
    }
    // Well inside the 60 s keep-alive this client announced.
    match client.read(Duration::from_secs(5)).await.context("no SUBACK within 5 s")? {
        raw::Read::Packet(0x90, body) => ensure!(body == [0x00, 0x07, 0x01], "SUBACK {body:?}"),
        other => anyhow::bail!("expected SUBACK, got {other:?}"),
    }
    Ok(())
}
