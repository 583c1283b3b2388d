"""Sessions: persistent sessions (3.1.1 clean session 0; 5.0 clean start 0
with a session expiry) keep subscriptions and queue QoS 1/2 messages while the
client is away; clean sessions do not; unacknowledged deliveries are resent
with DUP; a second connection with the same client id takes over."""

import time

from .clients import PUBACK, PUBLISH, SUBACK, V5, ack_packet, subscribe_packet


def persistent(version: str) -> dict:
    """Client options for a session that outlives the connection."""
    return dict(clean=False, session_expiry=300) if version == V5 else dict(clean=False)


def test_persistent_session_gets_messages_published_while_offline(mq, version):
    topic = mq.topic("offline")
    first = mq.paho(version, "durable", **persistent(version))
    assert not first.connack.session_present, "a new session is not present"
    first.subscribe(topic, 2)
    first.disconnect()

    pub = mq.paho(version, "pub")
    sent = [(b"one", 1), (b"\x00two\xff", 2), (b"three", 1)]
    for payload, qos in sent:
        pub.publish(topic, payload, qos)

    back = mq.paho(version, "durable", **persistent(version))
    assert back.connack.session_present, "CONNACK must say the session is present [MQTT-3.2.2-2]"
    got = [(m.payload, m.qos) for m in back.expect(3)]  # no SUBSCRIBE: the subscription is part of the session
    assert sorted(got) == sorted(sent)
    # Order is promised per topic and QoS [MQTT-4.6.0-5]; QoS 1 and 2 may interleave.
    assert [p for p, q in got if q == 1] == [b"one", b"three"]
    back.expect_none()
    pub.publish(topic, b"live", 1)
    assert back.expect_one().payload == b"live"


def test_persistent_session_with_mosquitto_clients(mq, version):
    topic = mq.topic("offline")
    cid = mq.client_id("durable")
    session = ["-c", "-i", cid, "-q", "1"] + (["-x", "300"] if version == V5 else [])
    first = mq.sub(version, topic, *session, "-W", "1")
    assert first.wait_exit() == 27  # -W timed out with nothing received
    for i in range(3):
        mq.pub(version, "-t", topic, "-m", f"m{i}", "-q", "1")
    back = mq.sub(version, topic, *session, "-C", "3", "-W", "10", wait=False)
    assert back.wait_exit(15) == 0
    assert [(m["payload"], m["qos"]) for m in back.messages()] == [(b"m0", 1), (b"m1", 1), (b"m2", 1)]


def test_clean_session_discards_state(mq, version):
    topic = mq.topic("clean")
    first = mq.paho(version, "c", **persistent(version))
    first.subscribe(topic, 1)
    first.disconnect()
    # Clean session / clean start 1 discards the stored session [MQTT-3.1.2-6, MQTT-3.1.2-4].
    fresh = mq.paho(version, "c", clean=True)
    assert not fresh.connack.session_present
    fresh.disconnect()
    pub = mq.paho(version, "pub")
    pub.publish(topic, b"nobody listens", 1)
    again = mq.paho(version, "c", **persistent(version))
    assert not again.connack.session_present
    again.expect_none()


def test_v5_session_expiry_zero_ends_with_connection(mq):
    topic = mq.topic("expiry0")
    first = mq.paho(V5, "c", clean=False)  # no Session Expiry Interval: 0
    first.subscribe(topic, 1)
    first.disconnect()
    mq.paho(V5, "pub").publish(topic, b"lost", 1)
    back = mq.paho(V5, "c", clean=False, session_expiry=300)
    assert not back.connack.session_present, "session expiry 0: the session ends when the connection closes"
    back.expect_none()


def test_v5_session_expires_after_interval(mq):
    topic = mq.topic("expiry")
    first = mq.paho(V5, "c", clean=False, session_expiry=1)
    first.subscribe(topic, 1)
    first.disconnect()
    time.sleep(3)
    mq.paho(V5, "pub").publish(topic, b"after expiry", 1)
    back = mq.paho(V5, "c", clean=False, session_expiry=300)
    assert not back.connack.session_present, "the session should have expired after 1s"
    back.expect_none()


def test_unacked_qos1_resent_with_dup_on_reconnect(mq, version):
    # Deliveries not acknowledged when the connection drops are sent again,
    # DUP=1, when the session resumes [MQTT-4.4.0-1]. paho acks at once, so
    # this client is raw packets.
    topic = mq.topic("redeliver")
    session_expiry = 300 if version == V5 else None
    conn = mq.raw(version=version, name="raw", clean=False, session_expiry=session_expiry)
    conn.send(subscribe_packet(version, topic, 1, packet_id=7))
    conn.expect(SUBACK)
    mq.paho(version, "pub").publish(topic, b"unacked", 1)
    first = conn.expect(PUBLISH)
    assert first.publish_fields(version)[2] == b"unacked"
    assert not first.flags & 0x08, "a first delivery has DUP=0"
    conn.close()  # no PUBACK

    again = mq.raw(version=version, name="raw", clean=False, session_expiry=session_expiry)
    assert again.connack.body[0] & 1, f"want session present, got {again.connack}"
    resent = again.expect(PUBLISH, "the unacknowledged PUBLISH again")
    resent_topic, packet_id, payload = resent.publish_fields(version)
    assert (resent_topic, payload) == (topic, b"unacked")
    assert resent.flags & 0x08, "a resent PUBLISH has DUP=1 [MQTT-3.3.1-1]"
    assert packet_id == first.publish_fields(version)[1], "resent with its original packet identifier [MQTT-4.4.0-1]"
    again.send(ack_packet(PUBACK, packet_id))


def test_same_client_id_takes_over(mq, version):
    topic = mq.topic("takeover")
    old = mq.paho(version, "dup")
    new = mq.paho(version, "dup")
    gone = old.wait_disconnect()
    if version == V5:
        assert gone.from_server and gone.code == 0x8E, f"want DISCONNECT 0x8E Session taken over, got {gone}"
    new.subscribe(topic, 1)
    mq.paho(version, "pub").publish(topic, b"to the new one", 1)
    assert new.expect_one().payload == b"to the new one"
    assert not new.disconnects, "the new connection must stay up"



def test_session_and_retained_survive_restart(mq, version):
    # polymq's brief: persistent sessions and retained messages are kept
    # across a broker restart (mosquitto: with `persistence true`).
    topic, retained_topic = mq.topic("queued"), mq.topic("status")
    broker = mq.start_broker(persistent=True)
    durable = mq.paho(version, "durable", broker=broker, **persistent(version))
    durable.subscribe(topic, 1)
    durable.disconnect()
    pub = mq.paho(version, "pub", broker=broker)
    pub.publish(topic, b"queued before restart", 1)
    pub.publish(retained_topic, b"retained before restart", 1, retain=True)
    pub.disconnect()

    broker = mq.restart(broker)
    back = mq.paho(version, "durable", broker=broker, **persistent(version))
    assert back.connack.session_present, "the persistent session must survive the restart"
    assert back.expect_one().payload == b"queued before restart"
    late = mq.paho(version, "late", broker=broker)
    late.subscribe(retained_topic, 1)
    msg = late.expect_one()
    assert (msg.payload, msg.retain) == (b"retained before restart", True)
    # The restored subscription still routes new messages.
    mq.paho(version, "pub2", broker=broker).publish(topic, b"after restart", 1)
    assert back.expect_one().payload == b"after restart"


def test_takeover_resumes_persistent_session(mq, version):
    topic = mq.topic("takeover")
    old = mq.paho(version, "roaming", **persistent(version))
    old.subscribe(topic, 1)
    new = mq.paho(version, "roaming", **persistent(version))
    assert new.connack.session_present, "the taken-over session continues on the new connection"
    old.wait_disconnect()
    mq.paho(version, "pub").publish(topic, b"follows the session", 1)
    assert new.expect_one().payload == b"follows the session"
