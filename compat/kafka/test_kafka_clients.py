"""confluent-kafka (librdkafka), kafka-python and kcat against polymq's Kafka listener.

Consumers use assign() / no group (the group APIs are a separate piece of work).
"""

from __future__ import annotations

import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

WAIT = 30.0
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def produce_confluent(bootstrap, topic, values, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    errors = []
    for v in values:
        p.produce(topic, value=v, key=b"k", on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(WAIT) == 0, "undelivered messages"
    assert errors == []


def consume_confluent(bootstrap, topic, count, partition=0, offset=0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, partition, offset)])
    out = []
    deadline = time.monotonic() + WAIT
    while len(out) < count and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append((m.offset(), m.value()))
    c.close()
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produce_consume_each_codec(kafka_broker, topic_name, codec):
    values = [f"{codec}-{i}".encode() * 10 for i in range(50)]
    produce_confluent(kafka_broker.bootstrap, topic_name, values, **{"compression.type": codec})
    got = consume_confluent(kafka_broker.bootstrap, topic_name, len(values))
    assert [v for _, v in got] == values
    assert [o for o, _ in got] == list(range(len(values)))


def test_confluent_idempotent_producer_and_restart(kafka_broker, topic_name):
    values = [f"i{i}".encode() for i in range(200)]
    produce_confluent(kafka_broker.bootstrap, topic_name, values, **{"enable.idempotence": True, "acks": "all"})
    kafka_broker.restart()
    produce_confluent(kafka_broker.bootstrap, topic_name, [b"after"], **{"enable.idempotence": True})
    got = consume_confluent(kafka_broker.bootstrap, topic_name, len(values) + 1)
    assert [v for _, v in got] == values + [b"after"], "data intact after a restart, nothing twice"


def test_confluent_offsets_for_times(kafka_broker, topic_name):
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    base = int(time.time() * 1000) - 100_000
    for i in range(5):
        p.produce(topic_name, value=f"t{i}".encode(), timestamp=base + i * 1000)
        p.flush(WAIT)
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "unused"})
    found = c.offsets_for_times([TopicPartition(topic_name, 0, base + 2500)], timeout=WAIT)
    assert found[0].offset == 3
    low, high = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=WAIT)
    assert (low, high) == (0, 5)
    c.close()


def test_confluent_admin_topics(kafka_broker, topic_name):
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1,
                                            config={"retention.ms": "86400000"})])
    futures[topic_name].result(WAIT)
    md = admin.list_topics(timeout=WAIT)
    assert len(md.topics[topic_name].partitions) == 2
    admin.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(WAIT)
    assert len(admin.list_topics(timeout=WAIT).topics[topic_name].partitions) == 4
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = admin.describe_configs([res])[res].result(WAIT)
    assert configs["retention.ms"].value == "86400000"
    assert configs["cleanup.policy"].value == "delete"
    with pytest.raises(Exception):
        admin.create_topics([NewTopic(topic_name + "c", 1, 1, config={"cleanup.policy": "compact"})])[topic_name + "c"].result(WAIT)
    admin.delete_topics([topic_name])[topic_name].result(WAIT)
    assert topic_name not in admin.list_topics(timeout=WAIT).topics


def test_confluent_auto_creation(kafka_broker, topic_name):
    produce_confluent(kafka_broker.bootstrap, topic_name, [b"x"])
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    assert topic_name in admin.list_topics(timeout=WAIT).topics


def test_kafka_python_producer_consumer_admin(kafka_broker, topic_name):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition as KTP
    from kafka.admin import NewTopic as KNewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    admin.create_topics([KNewTopic(topic_name, num_partitions=1, replication_factor=1)])
    assert topic_name in admin.list_topics()
    for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
        p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, compression_type=codec, acks="all")
        for i in range(10):
            p.send(topic_name, value=f"{codec}-{i}".encode())
        p.flush(WAIT)
        p.close()
    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=None, enable_auto_commit=False,
                      consumer_timeout_ms=5000)
    c.assign([KTP(topic_name, 0)])
    c.seek_to_beginning()
    got = [m.value for m in c]
    c.close()
    assert len(got) == 50 and got[0] == b"None-0" and got[-1] == b"zstd-9"
    admin.delete_topics([topic_name])
    admin.close()


def test_kafka_python_idempotent_producer(kafka_broker, topic_name):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True, acks="all")
    for i in range(20):
        p.send(topic_name, value=f"{i}".encode())
    p.flush(WAIT)
    p.close()
    got = consume_confluent(kafka_broker.bootstrap, topic_name, 20)
    assert [v for _, v in got] == [f"{i}".encode() for i in range(20)]


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_produce_consume(kafka_broker, topic_name, codec):
    lines = [f"{codec}-{i}" for i in range(100)]
    subprocess.run(["kcat", "-P", "-b", kafka_broker.bootstrap, "-t", topic_name, "-z", codec],
                   input="\n".join(lines) + "\n", text=True, check=True, timeout=WAIT)
    out = subprocess.run(["kcat", "-C", "-b", kafka_broker.bootstrap, "-t", topic_name, "-e", "-o", "beginning",
                          "-f", "%o:%s\n"], capture_output=True, text=True, check=True, timeout=WAIT)
    assert out.stdout.splitlines() == [f"{i}:{v}" for i, v in enumerate(lines)]


def test_kcat_metadata_lists_the_broker(kafka_broker, topic_name):
    produce_confluent(kafka_broker.bootstrap, topic_name, [b"x"])
    out = subprocess.run(["kcat", "-L", "-b", kafka_broker.bootstrap], capture_output=True, text=True, check=True, timeout=WAIT)
    assert "1 brokers" in out.stdout and f'topic "{topic_name}"' in out.stdout
