"""mosquitto_pub / mosquitto_sub as users run them: -m / -f / -s / -n
payloads at each QoS compared byte for byte (mosquitto_sub prints them in
hex), wildcards, -C N to stop after N messages, -W to stop after a timeout.
(Retained, will, persistent session, shared subscription, auth and v5
property runs of these tools live with those features' tests.)"""

import os
import time

import pytest


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_byte_exact(mq, version, qos, tmp_path):
    topic = mq.topic("cli", str(qos))
    binary = bytes(range(256)) * 3 + os.urandom(10_000)
    payload_file = tmp_path / "payload.bin"
    payload_file.write_bytes(binary)
    sub = mq.sub(version, topic, "-q", str(qos), "-C", "4", "-W", "20")
    mq.pub(version, "-t", topic, "-q", str(qos), "-m", "text \u00e9")
    mq.pub(version, "-t", topic, "-q", str(qos), "-f", str(payload_file))
    mq.pub(version, "-t", topic, "-q", str(qos), "-s", input=b"from stdin\x00\n")
    mq.pub(version, "-t", topic, "-q", str(qos), "-n")
    assert sub.wait_exit(25) == 0, sub.stderr
    got = sub.messages()
    assert [m["payload"] for m in got] == ["text \u00e9".encode(), binary, b"from stdin\x00\n", b""]
    assert all(m["topic"] == topic and m["qos"] == qos and not m["retain"] for m in got)
    # mosquitto_pub exits 0 only after its QoS handshake: PUBACK / PUBCOMP came back.


def test_sub_stops_after_count(mq, version):
    topic = mq.topic("count")
    sub = mq.sub(version, topic, "-q", "1", "-C", "3")
    for i in range(5):
        mq.pub(version, "-t", topic, "-m", f"n{i}", "-q", "1")
    assert sub.wait_exit() == 0
    assert [m["payload"] for m in sub.messages()] == [b"n0", b"n1", b"n2"]


def test_sub_timeout(mq, version):
    topic = mq.topic("quiet")
    started = time.monotonic()
    sub = mq.sub(version, topic, "-C", "5", "-W", "2")
    mq.pub(version, "-t", topic, "-m", "only one")
    status = sub.wait_exit(15)
    elapsed = time.monotonic() - started
    # 27 is mosquitto_sub's "Timed out": the broker kept the connection open
    # for the whole -W time (a broker that drops it makes the status differ).
    assert status == 27, f"status {status}, stderr {sub.stderr!r}"
    assert elapsed >= 1.5, f"exited after {elapsed:.1f}s"
    assert [m["payload"] for m in sub.messages()] == [b"only one"]


def test_sub_wildcards_and_verbose(mq, version):
    root = mq.topic("wc")
    sub = mq.sub(version, [f"{root}/+/b", f"{root}/x/#"], "-C", "3", "-W", "10", fmt="%t %p")
    for t in ("a/b", "x", "x/y/z", "a/c"):
        mq.pub(version, "-t", f"{root}/{t}", "-m", t, "-q", "1")
    assert sub.wait_exit() == 0
    lines = [line for line in sub.lines if line.startswith(root)]
    assert sorted(lines) == sorted([f"{root}/a/b a/b", f"{root}/x x", f"{root}/x/y/z x/y/z"])


def test_pub_repeat_and_line_mode(mq, version):
    topic = mq.topic("lines")
    sub = mq.sub(version, topic, "-q", "1", "-C", "3", "-W", "10")
    mq.pub(version, "-t", topic, "-q", "1", "-l", input=b"first\nsecond\nthird\n")
    assert sub.wait_exit() == 0
    assert [m["payload"] for m in sub.messages()] == [b"first", b"second", b"third"]
