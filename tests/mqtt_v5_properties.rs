//! End-to-end tests of MQTT 5 properties and subscription options with
//! rumqttc's v5 client against a real in-process polymq server (or the broker
//! named by `POLYMQ_TEST_MQTT_ADDR`, see `mqtt_common`).

mod mqtt_common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mqtt_common::v5::{
    empty_props, options, props_of, topic_of, Client, Filter, Publish, PublishProperties, QoS, RetainForwardRule, SubscribeProperties,
};
use mqtt_common::{TestBroker, QUIET};
use polymq_mqtt::MqttConfig;

async fn broker() -> Result<TestBroker> {
    TestBroker::start(MqttConfig::default()).await
}

async fn connect(broker: &TestBroker, name: &str) -> Result<Client> {
    Client::connect(options(broker, name)).await
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_topic_alias_is_resolved_for_subscribers() -> Result<()> {
    let broker = broker().await?;
    let (t1, t2) = (broker.topic("alias/one"), broker.topic("alias/two"));
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&broker.topic("alias/#"), QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    let alias_max = publisher.connack.properties.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0);
    ensure!(alias_max >= 2, "CONNACK Topic Alias Maximum {alias_max}: the test needs 2");

    let with_alias = |alias| PublishProperties { topic_alias: Some(alias), ..empty_props() };
    // Set aliases 1 and 2, then use them with an empty topic name.
    publisher.publish_props(&t1, QoS::AtLeastOnce, false, "set 1", Some(with_alias(1))).await?;
    publisher.publish_props(&t2, QoS::AtLeastOnce, false, "set 2", Some(with_alias(2))).await?;
    publisher.publish_props("", QoS::AtLeastOnce, false, "use 1", Some(with_alias(1))).await?;
    publisher.publish_props("", QoS::AtLeastOnce, false, "use 2", Some(with_alias(2))).await?;
    publisher.publish_props("", QoS::AtMostOnce, false, "use 1 at QoS 0", Some(with_alias(1))).await?;

    for (topic, payload) in [(&t1, "set 1"), (&t2, "set 2"), (&t1, "use 1"), (&t2, "use 2"), (&t1, "use 1 at QoS 0")] {
        let p = sub.recv().await?;
        ensure!(
            topic_of(&p) == *topic && text(&p) == payload,
            "got {:?} on {:?}, expected {payload:?} on {topic:?}",
            text(&p),
            topic_of(&p)
        );
        // The subscriber announced no Topic Alias Maximum: it must get full names.
        ensure!(props_of(&p).topic_alias.is_none(), "broker sent a topic alias to a client that allows none");
    }
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_drops_expired_and_decrements_the_rest_for_an_offline_session() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("expiry/message");
    let session = |b: &TestBroker| {
        let mut opts = options(b, "sub");
        opts.set_clean_start(false).set_session_expiry_interval(Some(300));
        opts
    };
    let mut sub = Client::connect(session(&broker)).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;

    let mut publisher = connect(&broker, "pub").await?;
    let expiring = |secs| PublishProperties { message_expiry_interval: Some(secs), ..empty_props() };
    publisher.publish_props(&topic, QoS::AtLeastOnce, false, "short", Some(expiring(1))).await?;
    publisher.publish_props(&topic, QoS::AtLeastOnce, false, "long", Some(expiring(100))).await?;

    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut sub = Client::connect(session(&broker)).await?;
    ensure!(sub.connack.session_present, "session not resumed");
    let p = sub.recv().await?;
    ensure!(text(&p) == "long", "first message after reconnect is {:?}: the 1 s message should have expired", text(&p));
    let left = props_of(&p).message_expiry_interval.context("delivered message lost its Message Expiry Interval")?;
    // 3 s waited in the queue: 100 - 3 = 97, give or take rounding.
    ensure!((90..=98).contains(&left), "Message Expiry Interval {left} after 3 s queued; expected about 97");
    sub.expect_no_publish(QUIET).await
}

/// Message expiry applies to retained messages too: an expired one is not
/// sent to new subscribers, a live one is, with the time it waited taken off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_expires_and_its_expiry_interval_counts_down() -> Result<()> {
    let broker = broker().await?;
    let (short, long) = (broker.topic("expiry/retained/short"), broker.topic("expiry/retained/long"));
    let mut publisher = connect(&broker, "pub").await?;
    let expiring = |secs| PublishProperties { message_expiry_interval: Some(secs), ..empty_props() };
    publisher.publish_props(&short, QoS::AtLeastOnce, true, "short", Some(expiring(1))).await?;
    publisher.publish_props(&long, QoS::AtLeastOnce, true, "long", Some(expiring(100))).await?;

    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&short, QoS::AtLeastOnce).await?;
    sub.expect_no_publish(QUIET).await.context("retained message with expiry 1 s delivered 3 s later")?;
    sub.subscribe(&long, QoS::AtLeastOnce).await?;
    let p = sub.recv().await?;
    ensure!(p.retain && text(&p) == "long", "got {p:?}");
    let left = props_of(&p).message_expiry_interval.context("retained message lost its Message Expiry Interval")?;
    ensure!((90..=98).contains(&left), "Message Expiry Interval {left} after 3 s retained; expected about 97");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_subscription_does_not_receive_own_publishes() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("nolocal");
    let mut me = connect(&broker, "me").await?;
    me.subscribe_with(Filter { nolocal: true, ..filter(&topic, QoS::AtLeastOnce) }, None).await?;
    let mut other = connect(&broker, "other").await?;
    other.subscribe(&topic, QoS::AtLeastOnce).await?;

    me.publish(&topic, QoS::AtLeastOnce, false, "mine").await?;
    let p = other.recv().await?; // it was published and routed...
    ensure!(text(&p) == "mine", "other got {:?}", text(&p));
    me.expect_no_publish(QUIET).await.context("no-local subscriber got its own publish")?; // ...but not back to me

    other.publish(&topic, QoS::AtLeastOnce, false, "theirs").await?;
    let p = me.recv().await?;
    ensure!(text(&p) == "theirs", "no-local subscriber got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_the_flag_and_default_clears_it() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("rap");
    let mut kept = connect(&broker, "kept").await?;
    kept.subscribe_with(Filter { preserve_retain: true, ..filter(&topic, QoS::AtLeastOnce) }, None).await?;
    let mut cleared = connect(&broker, "cleared").await?;
    cleared.subscribe(&topic, QoS::AtLeastOnce).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "retained").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, false, "not retained").await?;

    let (k1, k2) = (kept.recv().await?, kept.recv().await?);
    ensure!(k1.retain && !k2.retain, "retain-as-published: flags {} {} for retained / not, expected true false", k1.retain, k2.retain);
    let (c1, c2) = (cleared.recv().await?, cleared.recv().await?);
    ensure!(!c1.retain && !c2.retain, "retain-as-published 0: flags {} {}, expected false false", c1.retain, c2.retain);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_1_2() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("retain-handling");
    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&topic, QoS::AtLeastOnce, true, "retained").await?;
    let with = |rule| Filter { retain_forward_rule: rule, ..filter(&topic, QoS::AtLeastOnce) };

    // 0: on every subscribe, also when the subscription already exists.
    let mut every = connect(&broker, "every").await?;
    for round in ["first", "repeated"] {
        every.subscribe_with(with(RetainForwardRule::OnEverySubscribe), None).await?;
        let p = every.recv().await.with_context(|| format!("retain handling 0, {round} subscribe"))?;
        ensure!(p.retain && text(&p) == "retained", "retain handling 0, {round} subscribe: got {p:?}");
    }
    every.expect_no_publish(QUIET).await?;

    // 1: only when the subscription is new.
    let mut new_only = connect(&broker, "new-only").await?;
    new_only.subscribe_with(with(RetainForwardRule::OnNewSubscribe), None).await?;
    let p = new_only.recv().await.context("retain handling 1, new subscription")?;
    ensure!(p.retain && text(&p) == "retained", "retain handling 1, new subscription: got {p:?}");
    new_only.subscribe_with(with(RetainForwardRule::OnNewSubscribe), None).await?;
    new_only.expect_no_publish(QUIET).await.context("retain handling 1 sent the retained message for an existing subscription")?;

    // 2: never.
    let mut never = connect(&broker, "never").await?;
    never.subscribe_with(with(RetainForwardRule::Never), None).await?;
    never.expect_no_publish(QUIET).await.context("retain handling 2 sent a retained message")?;
    // ...but live messages do arrive on that subscription.
    publisher.publish(&topic, QoS::AtLeastOnce, false, "live").await?;
    let p = never.recv().await?;
    ensure!(text(&p) == "live", "got {:?}", text(&p));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_publish_carries_the_matching_subscription_identifiers() -> Result<()> {
    let broker = broker().await?;
    let (wide, narrow) = (broker.topic("subid/#"), broker.topic("subid/exact"));
    let mut sub = connect(&broker, "sub").await?;
    let id = |id| Some(SubscribeProperties { id: Some(id), user_properties: Vec::new() });
    sub.subscribe_with(filter(&wide, QoS::AtLeastOnce), id(7)).await?;
    sub.subscribe_with(filter(&narrow, QoS::AtLeastOnce), id(9)).await?;

    let mut publisher = connect(&broker, "pub").await?;
    publisher.publish(&broker.topic("subid/other"), QoS::AtLeastOnce, false, "wide only").await?;
    let p = sub.recv().await?;
    let ids = props_of(&p).subscription_identifiers;
    ensure!(ids == [7], "publish matching only subscription 7 carries identifiers {ids:?}");

    // Matches both: one copy with both identifiers, or one copy per subscription.
    publisher.publish(&narrow, QoS::AtLeastOnce, false, "both").await?;
    let mut seen = BTreeSet::new();
    let first = sub.recv().await?;
    seen.extend(props_of(&first).subscription_identifiers);
    if seen.len() < 2 {
        let second = sub.recv().await.context("only one copy, without both identifiers")?;
        seen.extend(props_of(&second).subscription_identifiers);
    }
    ensure!(seen == BTreeSet::from([7, 9]), "publish matching subscriptions 7 and 9 carried identifiers {seen:?}");
    sub.expect_no_publish(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_topic_and_correlation_data_pass_through() -> Result<()> {
    let broker = broker().await?;
    let (requests, replies) = (broker.topic("rpc/requests"), broker.topic("rpc/replies/requester"));
    let mut responder = connect(&broker, "responder").await?;
    responder.subscribe(&requests, QoS::AtLeastOnce).await?;
    let mut requester = connect(&broker, "requester").await?;
    requester.subscribe(&replies, QoS::AtLeastOnce).await?;

    let correlation: Vec<u8> = vec![0, 1, 2, 0xFF, 0xFE, b'c'];
    let request =
        PublishProperties { response_topic: Some(replies.clone()), correlation_data: Some(correlation.clone().into()), ..empty_props() };
    requester.publish_props(&requests, QoS::AtLeastOnce, false, "ping?", Some(request)).await?;

    let req = responder.recv().await?;
    let props = props_of(&req);
    ensure!(props.response_topic.as_deref() == Some(replies.as_str()), "response topic {:?}", props.response_topic);
    ensure!(props.correlation_data.as_deref() == Some(&correlation[..]), "correlation data {:?}", props.correlation_data);

    let reply = PublishProperties { correlation_data: props.correlation_data.clone(), ..empty_props() };
    let reply_topic = props.response_topic.context("no response topic")?;
    responder.publish_props(&reply_topic, QoS::AtLeastOnce, false, "pong", Some(reply)).await?;
    let rep = requester.recv().await?;
    ensure!(text(&rep) == "pong", "reply {:?}", text(&rep));
    ensure!(
        props_of(&rep).correlation_data.as_deref() == Some(&correlation[..]),
        "reply correlation data {:?}",
        props_of(&rep).correlation_data
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_pass_through_in_order() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("userprops");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    // Repeated names are allowed and their order is part of the message [MQTT-3.3.2-18].
    let sent: Vec<(String, String)> = [("zeta", "1"), ("alpha", "2"), ("zeta", "3"), ("", "empty name"), ("ünï", "çødé")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let props = PublishProperties { user_properties: sent.clone(), ..empty_props() };
    publisher.publish_props(&topic, QoS::AtLeastOnce, false, "with user properties", Some(props)).await?;
    let p = sub.recv().await?;
    let got = props_of(&p).user_properties;
    ensure!(got == sent, "user properties {got:?}, sent {sent:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_and_payload_format_indicator_pass_through() -> Result<()> {
    let broker = broker().await?;
    let topic = broker.topic("content");
    let mut sub = connect(&broker, "sub").await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    let props = PublishProperties { content_type: Some("application/json".into()), payload_format_indicator: Some(1), ..empty_props() };
    publisher.publish_props(&topic, QoS::AtLeastOnce, false, r#"{"temp":21.5}"#, Some(props)).await?;
    let binary =
        PublishProperties { content_type: Some("application/octet-stream".into()), payload_format_indicator: Some(0), ..empty_props() };
    publisher.publish_props(&topic, QoS::AtLeastOnce, false, vec![0xFFu8, 0x00], Some(binary)).await?;

    let p = props_of(&sub.recv().await?);
    ensure!(p.content_type.as_deref() == Some("application/json"), "content type {:?}", p.content_type);
    ensure!(p.payload_format_indicator == Some(1), "payload format indicator {:?}, sent 1 (UTF-8)", p.payload_format_indicator);
    let p = props_of(&sub.recv().await?);
    ensure!(p.content_type.as_deref() == Some("application/octet-stream"), "content type {:?}", p.content_type);
    // 0 is the default: sending it or leaving it out means the same.
    ensure!(matches!(p.payload_format_indicator, None | Some(0)), "payload format indicator {:?}, sent 0", p.payload_format_indicator);
    Ok(())
}

/// The client says Receive Maximum 2 and acks by hand: the broker never has
/// more than 2 QoS 1 publishes unacknowledged towards it, and sends the rest
/// as acks free the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_receive_maximum_bounds_unacked_deliveries() -> Result<()> {
    const COUNT: usize = 6;
    let broker = broker().await?;
    let topic = broker.topic("recvmax");
    let mut opts = options(&broker, "slow");
    opts.set_receive_maximum(Some(2)).set_manual_acks(true);
    let mut slow = Client::connect(opts).await?;
    slow.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = connect(&broker, "pub").await?;
    for i in 0..COUNT {
        publisher.publish(&topic, QoS::AtLeastOnce, false, format!("m{i}")).await?;
    }

    let mut received = Vec::new();
    let mut unacked = Vec::new();
    while received.len() < COUNT {
        // Fill the window...
        while unacked.len() < 2 && received.len() < COUNT {
            let p = slow.recv().await.with_context(|| format!("{} received, {} unacked", received.len(), unacked.len()))?;
            received.push(text(&p));
            unacked.push(p);
        }
        // ...then nothing more may come until an ack.
        slow.expect_no_publish(QUIET).await.with_context(|| format!("a third unacked publish after {received:?}"))?;
        let oldest = unacked.remove(0);
        slow.ack(&oldest).await?;
    }
    let want: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    ensure!(received == want, "received {received:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_announces_what_the_broker_supports() -> Result<()> {
    let broker = broker().await?;
    let client = connect(&broker, "c").await?;
    let props = client.connack.properties.clone().context("CONNACK without properties")?;
    // Absent means available (1); polymq supports all of these.
    for (name, value) in [
        ("Retain Available", props.retain_available),
        ("Wildcard Subscription Available", props.wildcard_subscription_available),
        ("Subscription Identifiers Available", props.subscription_identifiers_available),
        ("Shared Subscription Available", props.shared_subscription_available),
    ] {
        ensure!(value.unwrap_or(1) == 1, "{name} = {value:?}");
    }
    ensure!(props.max_qos.unwrap_or(2) == 2, "Maximum QoS {:?}", props.max_qos);
    if !broker.is_external() {
        let cfg = MqttConfig::default();
        ensure!(
            props.receive_max == Some(cfg.receive_maximum),
            "Receive Maximum {:?}, configured {}",
            props.receive_max,
            cfg.receive_maximum
        );
        ensure!(
            props.topic_alias_max == Some(cfg.topic_alias_maximum),
            "Topic Alias Maximum {:?}, configured {}",
            props.topic_alias_max,
            cfg.topic_alias_maximum
        );
        ensure!(
            props.max_packet_size == Some(cfg.max_packet_bytes),
            "Maximum Packet Size {:?}, configured {}",
            props.max_packet_size,
            cfg.max_packet_bytes
        );
    }
    Ok(())
}
