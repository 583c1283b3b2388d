"""Will messages: published when a client's connection ends without
DISCONNECT (socket dropped, process killed, keep-alive expired), not after a
normal DISCONNECT; MQTT 5 will delay."""

import socket
import time

from .clients import DISCONNECT, QUIET, TIMEOUT, V5

WILL_PAYLOAD = b"gone\x00\xff"


def test_will_on_dropped_socket(mq, version):
    will_topic = mq.topic("will")
    watcher = mq.paho(version, "watcher")
    watcher.subscribe(will_topic, 1)
    dying = mq.paho(version, "dying", will=dict(topic=will_topic, payload=WILL_PAYLOAD, qos=1))
    watcher.expect_none(0.2)
    dying.kill()
    msg = watcher.expect_one()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (will_topic, WILL_PAYLOAD, 1, False)


def test_no_will_after_normal_disconnect(mq, version):
    will_topic = mq.topic("will")
    watcher = mq.paho(version, "watcher")
    watcher.subscribe(will_topic, 1)
    leaving = mq.paho(version, "leaving", will=dict(topic=will_topic, payload=WILL_PAYLOAD, qos=1))
    leaving.disconnect()
    watcher.expect_none()


def test_will_retained(mq, version):
    will_topic = mq.topic("will")
    watcher = mq.paho(version, "watcher")
    watcher.subscribe(will_topic, 1)
    dying = mq.paho(version, "dying", will=dict(topic=will_topic, payload=b"offline", qos=1, retain=True))
    dying.kill()
    assert watcher.expect_one().payload == b"offline"
    # The will was retained, so a later subscriber finds it.
    late = mq.paho(version, "late")
    late.subscribe(will_topic, 1)
    msg = late.expect_one()
    assert (msg.payload, msg.retain) == (b"offline", True)


def test_will_when_mosquitto_sub_is_killed(mq, version):
    will_topic = mq.topic("will")
    watcher = mq.paho(version, "watcher")
    watcher.subscribe(will_topic, 2)
    victim = mq.sub(version, mq.topic("idle"), "--will-topic", will_topic, "--will-payload", "killed", "--will-qos", "2")
    victim.kill()  # SIGKILL: the kernel closes the socket, no DISCONNECT
    msg = watcher.expect_one()
    assert (msg.topic, msg.payload, msg.qos) == (will_topic, b"killed", 2)


def test_will_on_keepalive_timeout(mq, version):
    # A client that goes silent: after 1.5 x keep-alive the broker must close
    # the connection [MQTT-3.1.2-24] and publish the will.
    will_topic = mq.topic("will")
    watcher = mq.paho(version, "watcher")
    watcher.subscribe(will_topic, 1)
    conn = mq.raw(version=version, name="silent", keepalive=1, will=(will_topic, b"timed out", 1))
    started = time.monotonic()
    msg = watcher.expect_one(timeout=TIMEOUT)
    waited = time.monotonic() - started
    assert msg.payload == b"timed out"
    assert waited >= 0.9, f"will published after {waited:.2f}s, before the keep-alive of 1s ran out"
    try:
        after = conn.read_packet(timeout=2)
        if version == V5 and after is not None and after.kind == DISCONNECT:
            # MQTT 5 lets the server say why before closing.
            assert after.reason_code() == 0x8D, f"want DISCONNECT 0x8D Keep alive timeout, got {after}"
            after = conn.read_packet(timeout=2)
    except socket.timeout:
        after = "nothing"
    assert after is None, f"the silent connection is still open after its keep-alive expired (read {after})"


def test_v5_will_delay(mq):
    # With a session that outlives the connection, the will waits for the
    # Will Delay Interval [MQTT-3.1.3-9].
    will_topic = mq.topic("will")
    watcher = mq.paho(V5, "watcher")
    watcher.subscribe(will_topic, 1)
    dying = mq.paho(
        V5,
        "dying",
        clean=False,
        session_expiry=60,
        will=dict(topic=will_topic, payload=b"late", qos=1, properties=dict(WillDelayInterval=3)),
    )
    dying.kill()
    started = time.monotonic()
    msg = watcher.expect_one(timeout=3 + TIMEOUT)
    waited = time.monotonic() - started
    assert msg.payload == b"late"
    assert waited >= 2.5, f"will published {waited:.2f}s after the drop, before its delay of 3s"


def test_v5_will_delay_cancelled_by_reconnect(mq):
    # Reconnecting to the session before the delay ends means no will
    # [MQTT-3.1.3-9].
    will_topic = mq.topic("will")
    watcher = mq.paho(V5, "watcher")
    watcher.subscribe(will_topic, 1)
    will = dict(topic=will_topic, payload=b"late", qos=1, properties=dict(WillDelayInterval=3))
    dying = mq.paho(V5, "dying", clean=False, session_expiry=60, will=will)
    dying.kill()
    back = mq.paho(V5, "dying", clean=False, session_expiry=60)
    assert back.connack.session_present
    watcher.expect_none(3 + QUIET)


def test_v5_will_without_session_is_not_delayed(mq):
    # Session expiry 0: the session ends with the connection, and the will is
    # published then, whatever its delay ("whichever happens first").
    will_topic = mq.topic("will")
    watcher = mq.paho(V5, "watcher")
    watcher.subscribe(will_topic, 1)
    dying = mq.paho(V5, "dying", will=dict(topic=will_topic, payload=b"now", qos=1, properties=dict(WillDelayInterval=30)))
    dying.kill()
    assert watcher.expect_one().payload == b"now"
