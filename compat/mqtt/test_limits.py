"""Maximum packet size: a broker started with a 4 KiB limit advertises it to
MQTT 5 clients, accepts a packet of exactly that size, and answers a bigger
PUBLISH with DISCONNECT 0x95 (MQTT 5) or by closing (3.1.1, which has no way
to say why) — and keeps serving everyone else."""

import socket

import pytest

from .clients import DISCONNECT, PUBACK, V5, publish_packet

LIMIT = 4096
PACKET_TOO_LARGE = 0x95


@pytest.fixture
def small(mq):
    return mq.start_broker(max_packet_bytes=LIMIT)


def publish_of_total_size(version, topic, total, qos=1):
    """A PUBLISH whose whole packet (fixed header included) is `total` bytes."""
    # Starts a few bytes high (the remaining-length field grows with the
    # payload) and settles on the size.
    payload_len = total - len(publish_packet(version, topic, b"", qos))
    while len(publish_packet(version, topic, b"p" * payload_len, qos)) > total:
        payload_len -= 1
    frame = publish_packet(version, topic, b"p" * payload_len, qos)
    assert len(frame) == total, (len(frame), total)
    return frame


def send_oversize_and_read(conn, frame):
    """Sends the fixed header first and gives the broker a second to react
    to the announced length before sending the body (a broker that closes
    with unread bytes would make the kernel send RST and eat its answer)."""
    header_len = 1 + _varint_len(frame)
    conn.send(frame[:header_len])
    try:
        return conn.read_packet(timeout=1.0), "after the fixed header"
    except socket.timeout:
        pass
    try:
        conn.send(frame[header_len:])
    except (BrokenPipeError, ConnectionResetError):
        return None, "while sending the body"
    try:
        return conn.read_packet(), "after the body"
    except socket.timeout:
        return "nothing", "after the body"


def _varint_len(frame):
    """Bytes of the remaining-length field, which starts at frame[1]."""
    n = 1
    while frame[n] & 0x80:
        n += 1
    return n


def test_v5_connack_advertises_maximum_packet_size(mq, small):
    # Without the property a client may assume no limit (3.2.2.3.6), so a
    # broker that enforces one must say so.
    client = mq.paho(V5, "c", broker=small)
    assert getattr(client.connack.properties, "MaximumPacketSize", None) == LIMIT


def test_publish_at_the_limit_accepted(mq, small, version):
    topic = mq.topic("big")
    sub = mq.paho(version, "sub", broker=small)
    sub.subscribe(topic, 1)
    conn = mq.raw(small, version=version)
    frame = publish_of_total_size(version, topic, LIMIT)
    conn.send(frame)
    ack = conn.read_packet()
    assert ack is not None and ack.kind == PUBACK, f"a {LIMIT}-byte PUBLISH is within a {LIMIT}-byte limit; got {ack}"
    assert len(sub.expect_one().payload) > LIMIT - 100


def check_rejected(mq, small, version, total):
    topic = mq.topic("big")
    sub = mq.paho(version, "sub", broker=small)
    sub.subscribe(topic, 1)
    conn = mq.raw(small, version=version)
    answer, when = send_oversize_and_read(conn, publish_of_total_size(version, topic, total))
    if version == V5:
        assert answer is not None and answer != "nothing", f"want DISCONNECT 0x95 Packet too large, the connection closed {when} without it"
        assert answer.kind == DISCONNECT and answer.reason_code() == PACKET_TOO_LARGE, (
            f"want DISCONNECT 0x95 Packet too large, got {answer} {when}"
        )
        try:
            after = conn.read_packet(timeout=5)
        except socket.timeout:
            after = "nothing"
        assert after is None, f"the connection must close after the DISCONNECT, got {after}"
    else:
        assert answer is None, f"want the connection closed (3.1.1 has no reason code), got {answer} {when}"
    sub.expect_none(0.5)
    # Only that connection suffers.
    other = mq.paho(version, "other", broker=small)
    other.publish(topic, b"still fine", 1)
    assert sub.expect_one().payload == b"still fine"


def test_oversize_publish_rejected_raw(mq, small, version):
    check_rejected(mq, small, version, 2 * LIMIT)


def test_publish_one_byte_over_the_limit_rejected(mq, small, version):
    # Maximum Packet Size counts the whole packet, fixed header included
    # (MQTT 5 3.2.2.3.6); polymq advertises mqtt_max_packet_bytes as exactly that.
    check_rejected(mq, small, version, LIMIT + 1)


def test_oversize_publish_rejected_paho(mq, small, version):
    topic = mq.topic("big")
    sub = mq.paho(version, "sub", broker=small)
    sub.subscribe(topic, 1)
    pub = mq.paho(version, "pub", broker=small)
    pub.publish(topic, b"x" * (2 * LIMIT), 1, wait=False)
    gone = pub.wait_disconnect()
    if version == V5:
        assert gone.from_server and gone.code == PACKET_TOO_LARGE, f"want DISCONNECT 0x95 Packet too large, got {gone}"
    sub.expect_none(0.5)
    assert not sub.disconnects, "another client was disconnected too"
