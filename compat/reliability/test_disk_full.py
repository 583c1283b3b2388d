"""Disk full: producers get an error their protocol understands, nothing
acknowledged is lost, and the broker takes messages again once space returns,
without a restart.

The data directory is on a small tmpfs (needs root and `mount`; the test is
skipped, saying why, where mounting is not allowed). A ballast file leaves a
few MiB free; an AMQP publisher with confirms fills them until the broker
refuses with basic.nack, an MQTT 5 QoS 1 publish is answered with PUBACK
0x97 (quota exceeded), and a Kafka produce without retries gets
KAFKA_STORAGE_ERROR (56, retriable) while an idempotent acks=all producer
keeps retrying. Then the ballast goes, the same AMQP publisher is
acknowledged again, the retrying Kafka producer's records are all delivered,
the broker is killed with SIGKILL and restarted, and every acknowledged
message is read back in order.
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


KAFKA_TOPIC = "full-kafka"
KAFKA_VALUE = b"k" * 20_000


def kafka_produce_without_retries(port: int) -> list:
    """One record with retries off: the broker's own error comes back."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all", "retries": 0,
                  "enable.idempotence": False, "message.timeout.ms": 20000})
    errors = []
    p.produce(KAFKA_TOPIC, value=KAFKA_VALUE, on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    return errors


def kafka_consume_all(port: int) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "diskfull", "enable.auto.commit": False})
    c.assign([TopicPartition(KAFKA_TOPIC, 0, 0)])
    _, high = c.get_watermark_offsets(TopicPartition(KAFKA_TOPIC, 0), timeout=30)
    out = []
    deadline = time.monotonic() + 30
    while len(out) < high and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append(m.value())
    c.close()
    return out


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
        # The Kafka topic exists before the disk fills (creating it writes too).
        from confluent_kafka import KafkaError, Producer
        kafka_acked: list[bytes] = []
        first_kafka = b"before-" + KAFKA_VALUE
        p0 = Producer({"bootstrap.servers": f"127.0.0.1:{broker.ports['kafka']}", "acks": "all"})
        p0.produce(KAFKA_TOPIC, value=first_kafka, on_delivery=lambda err, msg: None if err else kafka_acked.append(msg.value()))
        assert p0.flush(30) == 0 and kafka_acked == [first_kafka]

        ballast = small_disk / "ballast"
        fill_to(ballast, small_disk, FREE_AFTER_BALLAST)
        first, refusal = publish_until_refused(broker.ports["amqp"], "full", 5000)
        assert refusal, f"{len(first)} publishes of 10 kB into {FREE_AFTER_BALLAST} free bytes were all confirmed"
        assert first, "nothing was confirmed before the disk filled"
        assert broker.proc.poll() is None, "the broker died when the disk filled"
        reason = mqtt5_publish_reason(broker.ports["mqtt"])
        assert reason == 0x97, f"MQTT 5 PUBACK reason {reason:#x} on a full disk, expected 0x97 quota exceeded"

        errors = kafka_produce_without_retries(broker.ports["kafka"])
        assert len(errors) == 1 and errors[0] is not None, f"a Kafka produce on a full disk was acknowledged: {errors}"
        # (retriable() is False here only because retries=0 ran out; librdkafka retries 56.)
        assert errors[0].code() == KafkaError.KAFKA_STORAGE_ERROR, errors[0]
        # An idempotent acks=all producer keeps retrying while the disk is full.
        retrying = Producer({"bootstrap.servers": f"127.0.0.1:{broker.ports['kafka']}", "acks": "all",
                             "enable.idempotence": True, "message.timeout.ms": 120000, "linger.ms": 0})
        kafka_failed = []
        want_kafka = [f"during-{i}-".encode() + KAFKA_VALUE for i in range(10)]
        for v in want_kafka:
            retrying.produce(KAFKA_TOPIC, value=v,
                             on_delivery=lambda err, msg: kafka_failed.append(err) if err else kafka_acked.append(msg.value()))
            retrying.poll(0)
        retrying.poll(2.0)
        assert len(kafka_acked) == 1, "a Kafka record was acknowledged while the disk was full"
        assert broker.proc.poll() is None, "the broker died under Kafka produce on a full disk"

        ballast.unlink()
        second, refusal2 = publish_until_refused(broker.ports["amqp"], "full", 200)
        assert not refusal2, f"still refused after space returned: {refusal2}"
        assert len(second) == 200
        assert retrying.flush(60) == 0, "the retrying Kafka producer did not deliver after space returned"
        assert kafka_failed == [], kafka_failed
        assert kafka_acked == [first_kafka] + want_kafka, "Kafka records acknowledged out of order or twice"

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
        got_kafka = kafka_consume_all(broker.ports["kafka"])
        assert got_kafka == kafka_acked, f"Kafka after kill -9: {len(got_kafka)} records, {len(kafka_acked)} acknowledged"
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
