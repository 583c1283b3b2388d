"""The one address space (issue 6) with unmodified clients: paho-mqtt,
pika and confluent-kafka (librdkafka) against one polymq. The same stories
as tests/interop.rs; the mapping rules are in docs/interop.md."""

from __future__ import annotations

import queue
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


def create_topic(broker, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for fut in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        fut.result(WAIT)


class Mqtt:
    """A paho MQTT 5 client collecting what it receives."""

    def __init__(self, broker, client_id: str):
        self.received: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.received.put(msg)
        self.client.connect("127.0.0.1", broker.ports["mqtt"])
        self.client.loop_start()

    def subscribe(self, topic_filter: str) -> None:
        done = queue.Queue()
        self.client.on_subscribe = lambda *a: done.put(True)
        self.client.subscribe(topic_filter, qos=1)
        done.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(WAIT)

    def next(self):
        return self.received.get(timeout=WAIT)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def amqp_queue(broker, name: str, binding: str):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.ports["amqp"]))
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    ch.queue_bind(name, "amq.topic", binding)
    return conn, ch


def amqp_get(ch, name: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(name, auto_ack=True)
        if method is not None:
            return method, props, body
        time.sleep(0.05)
    pytest.fail(f"nothing arrived in AMQP queue {name}")


def consume(broker, topic: str, count: int):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + 30
    while len(out) < count and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    assert len(out) == count, f"{len(out)} of {count} records from {topic}"
    return out


def test_mqtt_publish_reaches_kafka_amqp_and_mqtt(broker):
    create_topic(broker, "sensors", 3)
    conn, ch = amqp_queue(broker, "temps", "sensors.*.temp")
    sub = Mqtt(broker, "sub")
    sub.subscribe("sensors/+/temp")
    pub = Mqtt(broker, "dev42")
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "text/plain"
    props.UserProperty = [("unit", "C")]
    pub.publish("sensors/dev42/temp", b"21.5", props)

    [rec] = consume(broker, "sensors", 1)
    assert rec.key() == b"sensors/dev42/temp" and rec.value() == b"21.5"
    headers = dict(rec.headers())
    assert headers["content-type"] == b"text/plain" and headers["unit"] == b"C" and headers["mqtt.qos"] == b"1"
    method, amqp_props, body = amqp_get(ch, "temps")
    assert (method.exchange, method.routing_key, body) == ("amq.topic", "sensors.dev42.temp", b"21.5")
    assert amqp_props.content_type == "text/plain"
    msg = sub.next()
    assert msg.topic == "sensors/dev42/temp" and msg.payload == b"21.5"
    sub.close(), pub.close(), conn.close()


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kafka_produce_reaches_mqtt_and_amqp(broker, compression):
    create_topic(broker, "sensors")
    conn, ch = amqp_queue(broker, "all-sensors", "sensors.#")
    sub = Mqtt(broker, "cmds")
    sub.subscribe("sensors/dev7/cmd")
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": compression, "linger.ms": 5})
    for i in range(3):
        p.produce("sensors", key=b"sensors/dev7/cmd", value=f"cmd {i}".encode(), headers=[("content-type", b"text/plain")])
    assert p.flush(WAIT) == 0
    got = [sub.next() for _ in range(3)]
    assert [(m.topic, m.payload) for m in got] == [("sensors/dev7/cmd", f"cmd {i}".encode()) for i in range(3)]
    assert got[0].properties.ContentType == "text/plain"
    for i in range(3):
        method, props, body = amqp_get(ch, "all-sensors")
        assert (method.routing_key, body) == ("sensors.dev7.cmd", f"cmd {i}".encode())
    # Kafka consumers still read the batch as produced.
    assert [m.value() for m in consume(broker, "sensors", 3)] == [f"cmd {i}".encode() for i in range(3)]
    sub.close(), conn.close()


def test_amqp_publish_reaches_mqtt_and_kafka(broker):
    create_topic(broker, "sensors")
    sub = Mqtt(broker, "dev9-watch")
    sub.subscribe("sensors/dev9/temp")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.ports["amqp"]))
    ch = conn.channel()
    props = pika.BasicProperties(content_type="text/plain", correlation_id="corr-9", headers={"unit": "C"})
    ch.basic_publish("amq.topic", "sensors.dev9.temp", b"19.0", props)
    msg = sub.next()
    assert msg.topic == "sensors/dev9/temp" and msg.payload == b"19.0"
    assert msg.properties.ContentType == "text/plain" and msg.properties.CorrelationData == b"corr-9"
    assert ("unit", "C") in msg.properties.UserProperty
    [rec] = consume(broker, "sensors", 1)
    assert rec.key() == b"sensors/dev9/temp" and rec.value() == b"19.0"
    sub.close(), conn.close()


def test_dots_inside_levels_round_trip(broker):
    conn, ch = amqp_queue(broker, "fw", "fw.v1%2E2.*")
    sub = Mqtt(broker, "fw-watch")
    sub.subscribe("fw/v1.2/+")
    pub = Mqtt(broker, "fw-pub")
    pub.publish("fw/v1.2/stable", b"from mqtt")
    method, _, _ = amqp_get(ch, "fw")
    assert method.routing_key == "fw.v1%2E2.stable"
    assert sub.next().topic == "fw/v1.2/stable"
    ch.basic_publish("amq.topic", "fw.v1%2E2.beta", b"from amqp")
    msg = sub.next()
    assert (msg.topic, msg.payload) == ("fw/v1.2/beta", b"from amqp")
    sub.close(), pub.close(), conn.close()


def test_amqp_stream_is_a_kafka_topic(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.ports["amqp"]))
    ch = conn.channel()
    ch.queue_declare("orders", durable=True, arguments={"x-queue-type": "stream"})
    for i in range(2):
        ch.basic_publish("", "orders", f"o-{i}".encode())
    assert [(m.offset(), m.value()) for m in consume(broker, "orders", 2)] == [(0, b"o-0"), (1, b"o-1")]
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for i in range(2, 5):
        p.produce("orders", key=f"k-{i}".encode(), value=f"o-{i}".encode())
    assert p.flush(WAIT) == 0

    ch.basic_qos(prefetch_count=10)
    seen = []

    def on_message(chan, method, props, body):
        seen.append((props.headers["x-stream-offset"], body))
        chan.basic_ack(method.delivery_tag)
        if len(seen) == 3:
            chan.stop_consuming()

    ch.basic_consume("orders", on_message, arguments={"x-stream-offset": 2})
    conn.call_later(WAIT, ch.stop_consuming)
    ch.start_consuming()
    assert seen == [(2, b"o-2"), (3, b"o-3"), (4, b"o-4")]
    conn.close()
