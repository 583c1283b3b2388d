"""Protocol rules a client library hides, checked with raw packets: the QoS 2
handshake's duplicate and resume cases, flow control (Receive Maximum, the
client's Maximum Packet Size), topic alias limits, invalid filters, empty
client ids, PINGREQ."""

from .clients import (
    CONNACK,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RECEIVE_MAXIMUM,
    SUBACK,
    TOPIC_ALIAS,
    V5,
    V311,
    ack_packet,
    connect_packet,
    packet,
    prop_u16,
    publish_packet,
    subscribe_packet,
)


def test_qos2_duplicate_publish_delivered_once(mq, version):
    # Until PUBREL, a PUBLISH with the same packet id is answered with PUBREC
    # again and not delivered again (4.3.3).
    topic = mq.topic("exactly-once")
    sub = mq.paho(version, "sub")
    sub.subscribe(topic, 2)
    conn = mq.raw(version=version, name="pub")
    conn.send(publish_packet(version, topic, b"once", qos=2, packet_id=5))
    assert conn.expect(PUBREC, "PUBREC").packet_id() == 5
    conn.send(publish_packet(version, topic, b"once", qos=2, packet_id=5, dup=True))
    assert conn.expect(PUBREC, "PUBREC for the duplicate").packet_id() == 5
    conn.send(ack_packet(PUBREL, 5))
    assert conn.expect(PUBCOMP, "PUBCOMP").packet_id() == 5
    assert sub.expect_one().payload == b"once"
    sub.expect_none()


def test_qos2_pubrel_resent_on_resume(mq, version):
    # The broker sent PUBLISH, got PUBREC, sent PUBREL; the subscriber drops
    # before PUBCOMP. On resume the broker resends the PUBREL, not the
    # message [MQTT-4.4.0-1].
    topic = mq.topic("resume")
    session = dict(clean=False, session_expiry=300 if version == V5 else None)
    conn = mq.raw(version=version, name="sub", **session)
    conn.send(subscribe_packet(version, topic, 2))
    conn.expect(SUBACK, "SUBACK")
    mq.paho(version, "pub").publish(topic, b"x", 2)
    delivered = conn.expect(PUBLISH, "PUBLISH")
    _, packet_id, payload = delivered.publish_fields(version)
    assert payload == b"x"
    conn.send(ack_packet(PUBREC, packet_id))
    assert conn.expect(PUBREL, "PUBREL").packet_id() == packet_id
    conn.close()

    again = mq.raw(version=version, name="sub", **session)
    connack = again.connack
    assert connack.body[0] & 1, "session present"
    resent = again.expect(PUBREL, "the PUBREL resent (not the PUBLISH)")
    assert resent.packet_id() == packet_id
    again.send(ack_packet(PUBCOMP, packet_id))
    again.expect_silence()


def test_v5_receive_maximum_respected(mq):
    # The client allows 2 unacknowledged QoS 1/2 deliveries [MQTT-3.3.4-9].
    topic = mq.topic("flow")
    conn = mq.raw(version=V5, name="slow", properties=prop_u16(RECEIVE_MAXIMUM, 2))
    conn.send(subscribe_packet(V5, topic, 1))
    conn.expect(SUBACK, "SUBACK")
    pub = mq.paho(V5, "pub")
    for i in range(5):
        pub.publish(topic, str(i).encode(), 1)
    first = [conn.expect(PUBLISH, "PUBLISH") for _ in range(2)]
    conn.expect_silence()  # a third would exceed Receive Maximum
    got = [p.publish_fields(V5) for p in first]
    conn.send(ack_packet(PUBACK, got[0][1]))
    third = conn.expect(PUBLISH, "the 3rd PUBLISH once one was acked")
    got.append(third.publish_fields(V5))
    conn.expect_silence(0.5)
    for _, packet_id, _ in got[1:]:
        conn.send(ack_packet(PUBACK, packet_id))
    for _ in range(2):
        p = conn.expect(PUBLISH, "PUBLISH")
        got.append(p.publish_fields(V5))
        conn.send(ack_packet(PUBACK, got[-1][1]))
    assert [payload for _, _, payload in got] == [b"0", b"1", b"2", b"3", b"4"]


def test_v5_client_maximum_packet_size_respected(mq):
    # A message too big for the client's Maximum Packet Size is dropped for
    # that client, not sent and not a reason to disconnect [MQTT-3.1.2-24, -25].
    topic = mq.topic("small-client")
    small = mq.paho(V5, "small", connect_properties=dict(MaximumPacketSize=512))
    small.subscribe(topic, 1)
    big = mq.paho(V5, "big")
    big.subscribe(topic, 1)
    pub = mq.paho(V5, "pub")
    pub.publish(topic, b"x" * 2000, 1)
    pub.publish(topic, b"fits", 1)
    assert small.expect_one().payload == b"fits"
    assert [len(m.payload) for m in big.expect(2)] == [2000, 4]
    small.expect_none(0.5)
    assert not small.disconnects


def test_v5_topic_alias_out_of_range_is_an_error(mq):
    topic = mq.topic("alias")
    probe = mq.raw(version=V5, name="probe")
    connack = probe.connack
    maximum = getattr(connack.connack_properties(), "TopicAliasMaximum", 0)
    probe.close()
    # Above the maximum is 0x94 Topic Alias invalid by that code's definition;
    # 0 is "not permitted" [MQTT-3.3.2-8] without a code of its own, so any
    # error DISCONNECT will do for it (mosquitto says 0x81, Malformed Packet).
    for alias, accepted in ((maximum + 1, {0x94}), (0, {0x81, 0x82, 0x94})):
        conn = mq.raw(version=V5, name=f"alias{alias}")
        conn.send(publish_packet(V5, topic, b"x", qos=1, properties=prop_u16(TOPIC_ALIAS, alias)))
        answer = conn.read_packet()
        assert answer is not None and answer.kind == DISCONNECT and answer.reason_code() in accepted, (
            f"topic alias {alias} (maximum {maximum}): want DISCONNECT {sorted(accepted)}, got {answer or 'a plain close'}"
        )


def test_invalid_topic_filter_refused(mq, version):
    # `#` must be last; a broker refuses the filter in SUBACK or closes the
    # connection, and never grants it.
    conn = mq.raw(version=version, name="bad-filter")
    conn.send(subscribe_packet(version, mq.topic("#", "x"), 1, packet_id=3))
    answer = conn.read_packet()
    if answer is not None and answer.kind == SUBACK:
        codes = answer.suback_codes(version)
        assert codes and codes[0] >= 0x80, f"an invalid filter was granted: SUBACK {codes}"
        if version == V5:
            assert codes[0] == 0x8F, f"want 0x8F Topic Filter invalid, got {codes[0]:#04x}"
    elif answer is not None:
        assert version == V5 and answer.kind == DISCONNECT and answer.reason_code() >= 0x80, f"unexpected {answer}"


def test_empty_client_id(mq, version):
    conn = mq.raw()
    conn.send(connect_packet(version, "", clean=True))
    connack = conn.expect(CONNACK, "CONNACK")
    assert connack.reason_code() == 0, "an empty client id with a clean session is accepted [MQTT-3.1.3-6]"
    if version == V5:
        assigned = getattr(connack.connack_properties(), "AssignedClientIdentifier", None)
        assert assigned, "CONNACK must carry the Assigned Client Identifier [MQTT-3.2.2-16]"
    else:
        keep = mq.raw()
        keep.send(connect_packet(V311, "", clean=False))
        refused = keep.read_packet()
        assert refused is not None and refused.kind == CONNACK and refused.reason_code() == 2, (
            f"3.1.1: an empty client id with clean session 0 gets return code 2 [MQTT-3.1.3-8], got {refused}"
        )


def test_pingreq_answered(mq, version):
    conn = mq.raw(version=version, name="ping")
    for _ in range(3):
        conn.send(packet(PINGREQ, 0, b""))
        conn.expect(PINGRESP, "PINGRESP")


def test_v5_unsubscribe_without_subscription(mq):
    client = mq.paho(V5, "c")
    assert client.unsubscribe(mq.topic("never")) == [0x11], "UNSUBACK 0x11 No subscription existed"


def test_v5_will_properties_forwarded(mq):
    will_topic = mq.topic("will")
    watcher = mq.paho(V5, "watcher")
    watcher.subscribe(will_topic, 1)
    properties = dict(
        ContentType="text/plain",
        ResponseTopic=mq.topic("back"),
        CorrelationData=b"\x01\x02",
        UserProperty=[("why", "crash")],
        MessageExpiryInterval=60,
    )
    dying = mq.paho(V5, "dying", will=dict(topic=will_topic, payload=b"bye", qos=1, properties=properties))
    dying.kill()
    msg = watcher.expect_one()
    assert msg.payload == b"bye"
    for name in ("ContentType", "ResponseTopic", "CorrelationData", "UserProperty"):
        assert msg.prop(name) == properties[name], f"will property {name}"
    assert 0 < msg.prop("MessageExpiryInterval", 0) <= 60


def test_v5_inbound_receive_maximum_exceeded(mq):
    # A client may have at most the broker's Receive Maximum QoS 2 publishes
    # unfinished (no PUBCOMP yet); one more is answered with DISCONNECT 0x93
    # (MQTT 5 3.3.4 and 4.9).
    conn = mq.raw(version=V5, name="flood")
    connack = conn.connack
    maximum = getattr(connack.connack_properties(), "ReceiveMaximum", 65535)
    assert maximum < 65535, "this test needs a broker that advertises a Receive Maximum"
    topic = mq.topic("flood")
    conn.send(b"".join(publish_packet(V5, topic, b"x", qos=2, packet_id=i) for i in range(1, maximum + 2)))
    for i in range(1, maximum + 1):
        assert conn.expect(PUBREC, f"PUBREC {i} of {maximum}").packet_id() == i
    answer = conn.read_packet()
    assert answer is not None and answer.kind == DISCONNECT and answer.reason_code() == 0x93, (
        f"publish {maximum + 1} with {maximum} unfinished: want DISCONNECT 0x93 Receive Maximum exceeded, got {answer or 'a plain close'}"
    )


def test_publish_to_wildcard_topic_closes(mq, version):
    # Topic names carry no wildcards [MQTT-3.3.2-2]: 3.1.1 closes, 5.0 may
    # first send DISCONNECT 0x90 Topic Name invalid.
    conn = mq.raw(version=version, name="wild")
    conn.send(publish_packet(version, mq.topic("+", "x"), b"x", qos=1))
    answer = conn.read_packet()
    if version == V5 and answer is not None:
        assert answer.kind == DISCONNECT and answer.reason_code() in (0x90, 0x82, 0x81), f"unexpected {answer}"
        answer = conn.read_packet()
    assert answer is None, f"want the connection closed, got {answer}"


def test_second_connect_closes(mq, version):
    # A second CONNECT on a connection is a protocol violation [MQTT-3.1.0-2].
    conn = mq.raw(version=version, name="twice")
    conn.send(connect_packet(version, mq.client_id("twice")))
    answer = conn.read_packet()
    if version == V5 and answer is not None:
        assert answer.kind == DISCONNECT and answer.reason_code() == 0x82, f"want DISCONNECT 0x82 Protocol Error, got {answer}"
        answer = conn.read_packet()
    assert answer is None, f"want the connection closed, got {answer}"


def test_first_packet_must_be_connect(mq, version):
    # [MQTT-3.1.0-1]: anything else first and the connection is closed.
    conn = mq.raw()
    conn.send(subscribe_packet(version, mq.topic("x"), 0))
    answer = conn.read_packet()
    assert answer is None, f"want the connection closed, got {answer}"
