"""Disk full: producers get an error their protocol understands, nothing
acknowledged is lost, and the broker takes messages again once space returns,
without a restart.

The data directory is on a small tmpfs (needs root and `mount`; the test is
skipped, saying why, where mounting is not allowed). A ballast file leaves a
few MiB free; an AMQP publisher with confirms fills them until the broker
refuses with basic.nack, and an MQTT 5 QoS 1 publish is answered with PUBACK
0x97 (quota exceeded). Then the ballast goes, the same publisher is
acknowledged again, the broker is killed with SIGKILL and restarted, and every
acknowledged message is read back in order.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import crash_mixed

FREE_AFTER_BALLAST = 6 * 1024 * 1024
BODY = b"d" * 10_000


@pytest.fixture
def small_disk():
    mnt = Path(tempfile.mkdtemp(prefix="polymq-diskfull-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); this test needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        os.rmdir(mnt)


def fill_to(path: Path, mnt: Path, free_left: int) -> None:
    st = os.statvfs(mnt)
    size = st.f_bavail * st.f_frsize - free_left
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            n = min(size, len(chunk))
            f.write(chunk[:n])
            size -= n


def publish_until_refused(port: int, queue: str, limit: int) -> tuple[list[int], str]:
    import pika
    conn = pika.BlockingConnection(crash_mixed.amqp_params(port))
    ch = conn.channel()
    ch.confirm_delivery()
    acked: list[int] = []
    refusal = ""
    for seq in range(limit):
        try:
            ch.basic_publish("", queue, seq.to_bytes(4, "big") + BODY, pika.BasicProperties(delivery_mode=2))
        except Exception as e:  # NackError, or the channel closed with 506
            refusal = repr(e)
            break
        acked.append(seq)
    try:
        conn.close()
    except Exception:
        pass
    return acked, refusal


def mqtt5_publish_reason(port: int) -> int:
    import paho.mqtt.client as mqtt
    got: list[int] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="diskfull", protocol=mqtt.MQTTv5)

    def on_publish(client, userdata, mid, reason_code, properties):
        got.append(reason_code.value)
        done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish("crash/9999/mqtt", BODY, qos=1)
    assert done.wait(10), "no PUBACK"
    c.disconnect()
    c.loop_stop()
    return got[0]


def test_disk_full_refuses_then_recovers_and_loses_nothing(small_disk: Path, tmp_path: Path):
    broker = crash_mixed.Broker(small_disk / "data", tmp_path)
    broker.start()
    try:
        import pika
        conn = pika.BlockingConnection(crash_mixed.amqp_params(broker.ports["amqp"]))
        conn.channel().queue_declare("full", durable=True)
        conn.close()
        # An MQTT subscriber session that keeps what it is sent (so the
        # publish below has to be stored, not dropped for lack of subscribers).
        try:
            crash_mixed.mqtt_prepare(broker.ports["mqtt"], 9999)
        except RuntimeError as e:
            log = (tmp_path / f"polymq-{broker.starts}.log").read_text(errors="replace")
            raise AssertionError(f"{e}\nbroker log (tail):\n{log[-6000:]}") from e

        ballast = small_disk / "ballast"
        fill_to(ballast, small_disk, FREE_AFTER_BALLAST)
        first, refusal = publish_until_refused(broker.ports["amqp"], "full", 5000)
        assert refusal, f"{len(first)} publishes of 10 kB into {FREE_AFTER_BALLAST} free bytes were all confirmed"
        assert first, "nothing was confirmed before the disk filled"
        assert broker.proc.poll() is None, "the broker died when the disk filled"
        reason = mqtt5_publish_reason(broker.ports["mqtt"])
        assert reason == 0x97, f"MQTT 5 PUBACK reason {reason:#x} on a full disk, expected 0x97 quota exceeded"

        ballast.unlink()
        second, refusal2 = publish_until_refused(broker.ports["amqp"], "full", 200)
        assert not refusal2, f"still refused after space returned: {refusal2}"
        assert len(second) == 200

        broker.kill9()
        broker.start()
        conn = pika.BlockingConnection(crash_mixed.amqp_params(broker.ports["amqp"]))
        ch = conn.channel()
        got = []
        while True:
            method, _, body = ch.basic_get("full", auto_ack=True)
            if method is None:
                break
            got.append(int.from_bytes(body[:4], "big"))
        conn.close()
        want = first + second
        missing = sorted(set(want) - set(got))
        assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:20]}"
        # Order: the first run's messages, then the second's (sequence numbers restart at 0).
        assert got[: len(first)] == first, "the first run's messages are out of order"
        assert got[-len(second):] == second, "the second run's messages are out of order"
    finally:
        broker.stop()



def test_a_read_only_data_directory_stops_start_up_and_loses_nothing(small_disk: Path, tmp_path: Path):
    """Linux will not remount a filesystem read-only under a process holding
    files open for writing, so the read-only case a broker meets is at start
    (a disk that came back read-only after an error). polymq must refuse to
    start with an error naming the directory, not start half-working, and
    start normally with everything intact once the filesystem is writable."""
    broker = crash_mixed.Broker(small_disk / "data", tmp_path)
    broker.start()
    import pika
    conn = pika.BlockingConnection(crash_mixed.amqp_params(broker.ports["amqp"]))
    conn.channel().queue_declare("ro", durable=True)
    conn.close()
    first, refusal = publish_until_refused(broker.ports["amqp"], "ro", 50)
    assert not refusal and len(first) == 50, refusal
    broker.kill9()

    r = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(RuntimeError) as refused:
            broker.start()
        message = str(refused.value)
        assert str(small_disk / "data") in message, f"the error must name the data directory:\n{message}"
        assert "Read-only file system" in message or "read-only" in message.lower(), message
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], capture_output=True, text=True)

    broker.start()
    try:
        conn = pika.BlockingConnection(crash_mixed.amqp_params(broker.ports["amqp"]))
        ch = conn.channel()
        got = []
        while True:
            method, _, body = ch.basic_get("ro", auto_ack=True)
            if method is None:
                break
            got.append(int.from_bytes(body[:4], "big"))
        conn.close()
        assert got == first
    finally:
        broker.stop()
