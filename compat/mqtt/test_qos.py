"""Publish and subscribe through paho at each QoS, both directions: the
publisher's handshake with the broker (PUBACK, PUBREC/PUBREL/PUBCOMP) and the
broker's with the subscriber, payloads compared byte for byte."""

import os
import time

import pytest

from .clients import QUIET, V31

PAYLOADS = [
    b"",
    b"hello",
    bytes(range(256)),
    b"\x00" * 17,
    "h\u00e9llo \u2713 \U0001f600".encode(),
    os.urandom(200_000),
]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_roundtrip_byte_exact(mq, version, qos):
    topic = mq.topic("qos", str(qos))
    sub = mq.paho(version, "sub")
    assert sub.subscribe(topic, qos) == [qos], "SUBACK must grant the requested QoS"
    pub = mq.paho(version, "pub")
    for payload in PAYLOADS:
        reason = pub.publish(topic, payload, qos)
        assert reason is None or reason < 0x80, f"publish refused with reason {reason:#04x}"
    got = sub.expect(len(PAYLOADS))
    for sent, msg in zip(PAYLOADS, got):
        assert msg.topic == topic
        assert msg.payload == sent, f"payload of {len(sent)} bytes came back as {len(msg.payload)} bytes, or differs"
        assert msg.qos == qos
        assert not msg.retain
        assert not msg.dup
    sub.expect_none()


def test_delivered_qos_is_min_of_publish_and_granted(mq, version):
    topic = mq.topic("downgrade")
    subs = {}
    for granted in (0, 1, 2):
        subs[granted] = mq.paho(version, f"sub{granted}")
        assert subs[granted].subscribe(topic, granted) == [granted]
    pub = mq.paho(version, "pub")
    for published in (0, 1, 2):
        pub.publish(topic, f"at {published}".encode(), published)
    for granted, sub in subs.items():
        got = sub.expect(3)
        assert [m.payload for m in got] == [b"at 0", b"at 1", b"at 2"]
        assert [m.qos for m in got] == [min(p, granted) for p in (0, 1, 2)], f"subscribed at QoS {granted}"


def test_order_kept_per_topic(mq, version):
    topic = mq.topic("order")
    sub = mq.paho(version, "sub")
    sub.subscribe(topic, 1)
    pub = mq.paho(version, "pub")
    for i in range(100):
        pub.publish(topic, str(i).encode(), 1, wait=False)
    got = sub.expect(100)
    assert [int(m.payload) for m in got] == list(range(100))


def test_wildcards(mq, version):
    root = mq.topic("w")
    sub_one = mq.paho(version, "one")
    sub_one.subscribe(f"{root}/+/temp", 1)
    sub_many = mq.paho(version, "many")
    sub_many.subscribe(f"{root}/#", 1)
    pub = mq.paho(version, "pub")
    topics = [f"{root}/a/temp", f"{root}/a/b/temp", f"{root}/b/temp", f"{root}/a/hum", root]
    for t in topics:
        pub.publish(t, t.encode(), 1)
    assert sorted(m.topic for m in sub_one.expect(2)) == [f"{root}/a/temp", f"{root}/b/temp"]
    sub_one.expect_none()
    # `a/#` also matches the parent level `a` itself [MQTT-4.7.1-2].
    assert sorted(m.topic for m in sub_many.expect(5)) == sorted(topics)


def test_unsubscribe_stops_delivery(mq, version):
    topic = mq.topic("unsub")
    sub = mq.paho(version, "sub")
    sub.subscribe(topic, 1)
    pub = mq.paho(version, "pub")
    pub.publish(topic, b"before", 1)
    assert sub.expect_one().payload == b"before"
    unsuback = sub.unsubscribe(topic)
    if version == "v5":
        assert unsuback == [0], "UNSUBACK reason: Success"
    pub.publish(topic, b"after", 1)
    sub.expect_none()


def test_mqtt31_clients(mq):
    # MQTT 3.1 (protocol name "MQIsdp", level 3) still ships in old devices.
    topic = mq.topic("v31")
    sub = mq.paho(V31, "sub")
    assert sub.subscribe(topic, 2) == [2]
    cli = mq.sub(V31, topic, "-q", "1", "-C", "2", "-W", "10")
    pub = mq.paho(V31, "pub")
    pub.publish(topic, b"\x00paho 3.1", 2)
    mq.pub(V31, "-t", topic, "-m", "mosquitto_pub 3.1", "-q", "1")
    # Two publishers: no order between them is promised.
    assert sorted((m.payload, m.qos) for m in sub.expect(2)) == [(b"\x00paho 3.1", 2), (b"mosquitto_pub 3.1", 1)]
    assert cli.wait_exit() == 0
    assert sorted((m["payload"], m["qos"]) for m in cli.messages()) == [(b"\x00paho 3.1", 1), (b"mosquitto_pub 3.1", 1)]


def test_overlapping_subscriptions_respect_max_qos(mq, version):
    # One copy at the highest granted QoS, or one copy per subscription
    # [MQTT-3.3.5-1] (3.1.1), 3.3.4 (5.0).
    root = mq.topic("overlap")
    sub = mq.paho(version, "sub")
    sub.subscribe(f"{root}/#", 0)
    sub.subscribe(f"{root}/x", 2)
    mq.paho(version, "pub").publish(f"{root}/x", b"m", 2)
    copies = sub.expect(1)
    time.sleep(QUIET)  # a second copy is allowed
    copies += sub.take_all()
    assert 1 <= len(copies) <= 2 and all(m.payload == b"m" for m in copies), copies
    assert max(m.qos for m in copies) == 2, f"QoS of the copies: {[m.qos for m in copies]}"


def test_resubscribe_replaces_subscription(mq, version):
    # The same filter again replaces the subscription, QoS included
    # [MQTT-3.8.4-3]; messages are not doubled.
    topic = mq.topic("resub")
    sub = mq.paho(version, "sub")
    assert sub.subscribe(topic, 0) == [0]
    assert sub.subscribe(topic, 2) == [2]
    mq.paho(version, "pub").publish(topic, b"once", 2)
    msg = sub.expect_one()
    assert (msg.payload, msg.qos) == (b"once", 2)
    sub.expect_none()
