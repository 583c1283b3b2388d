"""Shared subscriptions `$share/<group>/<filter>`: each message goes to one
member of the group, and every group (and every plain subscription) gets its
own copy. Defined by MQTT 5; mosquitto also accepts them from 3.1.1 clients,
and polymq's brief asks for both."""

import time

from .clients import QUIET, TIMEOUT

COUNT = 20


def collect(members, count):
    """Messages across members until `count` arrived, then a quiet period to
    catch duplicates."""
    deadline = time.monotonic() + TIMEOUT
    got = {m.client_id: [] for m in members}
    while sum(map(len, got.values())) < count and time.monotonic() < deadline:
        for m in members:
            got[m.client_id] += m.take_all()
        time.sleep(0.05)
    time.sleep(QUIET)
    for m in members:
        got[m.client_id] += m.take_all()
    return got


def test_shared_subscription_delivers_each_message_once(mq, version):
    topic = mq.topic("jobs")
    members = [mq.paho(version, f"worker{i}") for i in range(2)]
    for m in members:
        assert m.subscribe(f"$share/g/{topic}", 1) == [1]
    plain = mq.paho(version, "plain")
    plain.subscribe(topic, 1)
    pub = mq.paho(version, "pub")
    for i in range(COUNT):
        pub.publish(topic, f"job {i}".encode(), 1)

    got = collect(members, COUNT)
    payloads = [msg.payload for msgs in got.values() for msg in msgs]
    assert sorted(payloads) == sorted(f"job {i}".encode() for i in range(COUNT)), (
        f"each message exactly once across the group; per member: { {k: len(v) for k, v in got.items()} }"
    )
    assert all(msg.topic == topic for msgs in got.values() for msg in msgs), "delivered under the published topic"
    # The shared group does not take messages from a plain subscription.
    assert [m.payload for m in plain.expect(COUNT)] == [f"job {i}".encode() for i in range(COUNT)]


def test_shared_groups_are_independent(mq, version):
    topic = mq.topic("events")
    groups = {g: [mq.paho(version, f"{g}-{i}") for i in range(2)] for g in ("g1", "g2")}
    for g, members in groups.items():
        for m in members:
            m.subscribe(f"$share/{g}/{topic}", 1)
    pub = mq.paho(version, "pub")
    for i in range(COUNT):
        pub.publish(topic, str(i).encode(), 1)
    for g, members in groups.items():
        got = collect(members, COUNT)
        payloads = sorted(int(msg.payload) for msgs in got.values() for msg in msgs)
        assert payloads == list(range(COUNT)), f"group {g} must see every message once"


def test_shared_subscription_with_mosquitto_sub(mq, version):
    topic = mq.topic("tasks")
    members = [mq.sub(version, f"$share/g/{topic}", "-q", "1") for _ in range(2)]
    for i in range(COUNT):
        mq.pub(version, "-t", topic, "-m", f"t{i}", "-q", "1")
    deadline = time.monotonic() + TIMEOUT
    while sum(len(m.messages()) for m in members) < COUNT and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(QUIET)
    payloads = sorted(msg["payload"] for m in members for msg in m.messages())
    assert payloads == sorted(f"t{i}".encode() for i in range(COUNT))
