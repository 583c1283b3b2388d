"""MQTT 5 features through paho: user properties, request/response (response
topic + correlation data), content type and payload format, message expiry,
subscription identifiers, no-local, retain handling / retain as published,
topic aliases; and the same properties through mosquitto_pub -D."""

import time

from .clients import QUIET, V5


def test_user_properties_forwarded_in_order(mq):
    topic = mq.topic("up")
    sub = mq.paho(V5, "sub")
    sub.subscribe(topic, 1)
    pub = mq.paho(V5, "pub")
    # Order kept and duplicates allowed [MQTT-3.3.2-18].
    user = [("region", "eu"), ("k", "1"), ("k", "2"), ("\u00fcnicode", "\u2713")]
    pub.publish(topic, b"x", 1, properties=dict(UserProperty=user))
    assert sub.expect_one().prop("UserProperty") == user


def test_request_response(mq):
    requests = mq.topic("svc", "requests")
    replies = mq.topic("client", "replies")
    correlation = b"\x00req-42\xff"
    responder = mq.paho(V5, "responder")
    responder.subscribe(requests, 1)
    requester = mq.paho(V5, "requester")
    requester.subscribe(replies, 1)

    requester.publish(requests, b"ping", 1, properties=dict(ResponseTopic=replies, CorrelationData=correlation))
    request = responder.expect_one()
    assert request.prop("ResponseTopic") == replies
    assert request.prop("CorrelationData") == correlation
    responder.publish(request.prop("ResponseTopic"), b"pong", 1, properties=dict(CorrelationData=request.prop("CorrelationData")))
    reply = requester.expect_one()
    assert (reply.topic, reply.payload, reply.prop("CorrelationData")) == (replies, b"pong", correlation)


def test_content_type_and_payload_format(mq):
    topic = mq.topic("ct")
    sub = mq.paho(V5, "sub")
    sub.subscribe(topic, 1)
    pub = mq.paho(V5, "pub")
    pub.publish(topic, b'{"t": 21.5}', 1, properties=dict(ContentType="application/json", PayloadFormatIndicator=1))
    pub.publish(topic, b"\x89PNG", 1, properties=dict(ContentType="image/png"))
    first, second = sub.expect(2)
    assert (first.prop("ContentType"), first.prop("PayloadFormatIndicator")) == ("application/json", 1)
    assert second.prop("ContentType") == "image/png"
    assert second.prop("PayloadFormatIndicator", 0) == 0


def test_message_expiry_forwarded_and_counted_down(mq):
    topic = mq.topic("exp")
    sub = mq.paho(V5, "sub")
    sub.subscribe(topic, 1)
    mq.paho(V5, "pub").publish(topic, b"x", 1, properties=dict(MessageExpiryInterval=120))
    expiry = sub.expect_one().prop("MessageExpiryInterval")
    assert expiry is not None and 110 <= expiry <= 120, f"forwarded Message Expiry Interval {expiry}, want <= 120 [MQTT-3.3.2-6]"


def test_message_expiry_drops_queued_message(mq):
    # A message that expires while it waits in an offline session is not
    # delivered [MQTT-3.3.2-5]; one that has not is, with the time it waited
    # taken off its expiry [MQTT-3.3.2-6].
    topic = mq.topic("exp")
    away = mq.paho(V5, "away", clean=False, session_expiry=300)
    away.subscribe(topic, 1)
    away.disconnect()
    pub = mq.paho(V5, "pub")
    pub.publish(topic, b"short", 1, properties=dict(MessageExpiryInterval=1))
    pub.publish(topic, b"long", 1, properties=dict(MessageExpiryInterval=300))
    time.sleep(3)
    back = mq.paho(V5, "away", clean=False, session_expiry=300)
    msg = back.expect_one()
    assert msg.payload == b"long", "the message with a 1s expiry must be gone after 3s"
    expiry = msg.prop("MessageExpiryInterval")
    assert expiry is not None and expiry <= 298, f"Message Expiry Interval {expiry} after waiting 3s of 300"
    back.expect_none()


def test_message_expiry_of_retained_message(mq):
    topic = mq.topic("exp")
    pub = mq.paho(V5, "pub")
    pub.publish(topic, b"short-lived", 1, retain=True, properties=dict(MessageExpiryInterval=1))
    time.sleep(3)
    sub = mq.paho(V5, "sub")
    sub.subscribe(topic, 1)
    sub.expect_none()


def test_subscription_identifiers(mq):
    root = mq.topic("sid")
    sub = mq.paho(V5, "sub")
    sub.subscribe(f"{root}/#", 1, subscription_id=7)
    sub.subscribe(f"{root}/x", 1, subscription_id=9)
    sub.subscribe(f"{root}/plain/+", 1)
    pub = mq.paho(V5, "pub")

    pub.publish(f"{root}/x", b"both", 1)
    # Overlapping subscriptions: one copy carrying both identifiers, or one
    # copy per subscription with its own [MQTT-3.3.4-3..5].
    time.sleep(QUIET)
    copies = sub.take_all()
    assert copies and all(m.payload == b"both" for m in copies), copies
    ids = sorted(i for m in copies for i in m.prop("SubscriptionIdentifier", []))
    assert ids == [7, 9], f"subscription identifiers over {len(copies)} copies: {ids}"

    pub.publish(f"{root}/y", b"one", 1)
    assert sub.expect_one().prop("SubscriptionIdentifier") == [7]
    sub.expect_none(0.3)


def test_no_local(mq):
    topic = mq.topic("chat")
    me = mq.paho(V5, "me")
    me.subscribe(topic, 1, no_local=True)
    echo = mq.paho(V5, "echo")
    echo.subscribe(topic, 1)
    me.publish(topic, b"mine", 1)
    echo.publish(topic, b"theirs", 1)
    assert me.expect_one().payload == b"theirs"
    me.expect_none()
    # Without no-local a client gets its own messages back.
    assert sorted(m.payload for m in echo.expect(2)) == [b"mine", b"theirs"]


def test_retain_handling(mq):
    topic = mq.topic("rh")
    mq.paho(V5, "pub").publish(topic, b"kept", 1, retain=True)
    # 0: send retained messages at subscribe time, every time.
    always = mq.paho(V5, "always")
    always.subscribe(topic, 1, retain_handling=0)
    assert always.expect_one().payload == b"kept"
    always.subscribe(topic, 1, retain_handling=0)
    assert always.expect_one().payload == b"kept"
    # 1: only if the subscription did not exist yet.
    new_only = mq.paho(V5, "new-only")
    new_only.subscribe(topic, 1, retain_handling=1)
    assert new_only.expect_one().payload == b"kept"
    new_only.subscribe(topic, 1, retain_handling=1)
    new_only.expect_none()
    # 2: never.
    never = mq.paho(V5, "never")
    never.subscribe(topic, 1, retain_handling=2)
    never.expect_none()


def test_retain_as_published(mq):
    topic = mq.topic("rap")
    keep = mq.paho(V5, "keep")
    keep.subscribe(topic, 1, retain_as_published=True)
    clear = mq.paho(V5, "clear")
    clear.subscribe(topic, 1)
    mq.paho(V5, "pub").publish(topic, b"r", 1, retain=True)
    assert keep.expect_one().retain, "Retain As Published 1 keeps the RETAIN flag [MQTT-3.3.1-13]"
    assert not clear.expect_one().retain


def test_topic_alias_from_client(mq):
    first_topic, second_topic = mq.topic("alias", "one"), mq.topic("alias", "two")
    sub = mq.paho(V5, "sub")
    sub.subscribe(mq.topic("alias", "+"), 1)
    pub = mq.paho(V5, "pub")
    maximum = pub.connack.properties and getattr(pub.connack.properties, "TopicAliasMaximum", 0)
    assert maximum and maximum >= 1, "CONNACK must offer Topic Alias Maximum >= 1 for clients to use aliases"
    pub.publish(first_topic, b"set alias", 1, properties=dict(TopicAlias=1))
    pub.publish("", b"alias only", 1, properties=dict(TopicAlias=1))
    pub.publish(second_topic, b"remap", 1, properties=dict(TopicAlias=1))
    pub.publish("", b"alias only again", 1, properties=dict(TopicAlias=1))
    got = [(m.topic, m.payload) for m in sub.expect(4)]
    assert got == [
        (first_topic, b"set alias"),
        (first_topic, b"alias only"),
        (second_topic, b"remap"),
        (second_topic, b"alias only again"),
    ]
    assert not pub.disconnects


def test_properties_with_mosquitto_clients(mq):
    topic = mq.topic("props")
    fmt = "MSG|%t|%P|%C|%R|%D|%E|%F"
    sub = mq.sub(V5, topic, "-C", "1", "-W", "10", fmt=fmt)
    mq.pub(
        V5,
        "-t", topic, "-m", "{}", "-q", "1",
        "-D", "publish", "user-property", "origin", "cli",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", f"{topic}/reply",
        "-D", "publish", "correlation-data", "abc123",
        "-D", "publish", "message-expiry-interval", "60",
        "-D", "publish", "payload-format-indicator", "1",
    )  # fmt: skip
    assert sub.wait_exit() == 0
    line = next(line for line in sub.lines if line.startswith("MSG|"))
    _, got_topic, user, content_type, response, correlation, expiry, pfi = line.split("|")
    assert (got_topic, user, content_type, response, correlation, pfi) == (
        topic, "origin:cli", "application/json", f"{topic}/reply", "abc123", "1"
    )  # fmt: skip
    assert 55 <= int(expiry) <= 60
