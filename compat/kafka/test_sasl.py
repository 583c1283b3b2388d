"""SASL against polymq's Kafka listener (`kafka_sasl = true`, users from
POLYMQ_USERS): confluent-kafka with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512,
kafka-python with PLAIN and SCRAM, kcat with PLAIN; wrong passwords and
clients without SASL are refused."""

from __future__ import annotations

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

WAIT = 30.0
USER, PASSWORD = "alice", "s3cret-pw"
SASL_ENV = {"POLYMQ_KAFKA_SASL": "true", "POLYMQ_USERS": f"{USER}:{PASSWORD},bob:other"}
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

pytestmark = pytest.mark.parametrize("kafka_broker", [SASL_ENV], indirect=True)


@pytest.fixture(autouse=True)
def _only_polymq(request):
    if request.config.getoption("--target") != "polymq":
        pytest.skip("needs a broker started with SASL users")


def sasl_conf(bootstrap, mechanism, password=PASSWORD):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": USER, "sasl.password": password}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_produce_consume(kafka_broker, topic_name, mechanism):
    conf = sasl_conf(kafka_broker.bootstrap, mechanism)
    p = Producer({**conf, "acks": "all"})
    errors = []
    for i in range(20):
        p.produce(topic_name, value=f"{mechanism}-{i}".encode(), on_delivery=lambda e, m: errors.append(e) if e else None)
    assert p.flush(WAIT) == 0 and errors == []
    c = Consumer({**conf, "group.id": f"g-{topic_name}", "auto.offset.reset": "earliest"})
    c.subscribe([topic_name])
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 20 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    assert got == [f"{mechanism}-{i}".encode() for i in range(20)]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_wrong_password_is_refused(kafka_broker, mechanism):
    errors = []
    p = Producer({**sasl_conf(kafka_broker.bootstrap, mechanism, password="wrong"), "error_cb": errors.append})
    with pytest.raises(Exception):
        p.list_topics(timeout=5)
    deadline = time.monotonic() + WAIT
    while not errors and time.monotonic() < deadline:
        p.poll(0.2)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def test_confluent_without_sasl_is_refused(kafka_broker):
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    with pytest.raises(Exception):
        admin.list_topics(timeout=5)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python(kafka_broker, topic_name, mechanism):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    conf = dict(bootstrap_servers=kafka_broker.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=mechanism, sasl_plain_username=USER, sasl_plain_password=PASSWORD)
    p = KafkaProducer(acks="all", **conf)
    for i in range(10):
        p.send(topic_name, value=f"{i}".encode())
    p.flush(WAIT)
    p.close()
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, consumer_timeout_ms=5000, **conf)
    c.assign([KTP(topic_name, 0)])
    c.seek_to_beginning()
    got = [m.value for m in c]
    c.close()
    assert got == [f"{i}".encode() for i in range(10)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_kafka_python_wrong_password_is_refused(kafka_broker, mechanism):
    from kafka import KafkaProducer

    with pytest.raises(Exception):
        p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism=mechanism, sasl_plain_username=USER, sasl_plain_password="wrong",
                          max_block_ms=5000)
        p.send("never", b"x").get(timeout=5)


def kcat(bootstrap, *args, password=PASSWORD, **kw):
    return subprocess.run(["kcat", "-b", bootstrap, "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN",
                           "-X", f"sasl.username={USER}", "-X", f"sasl.password={password}", *args],
                          capture_output=True, text=True, timeout=WAIT, **kw)


def test_kcat_plain(kafka_broker, topic_name):
    lines = [f"line-{i}" for i in range(10)]
    r = kcat(kafka_broker.bootstrap, "-P", "-t", topic_name, input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    r = kcat(kafka_broker.bootstrap, "-C", "-t", topic_name, "-e", "-o", "beginning")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == lines
    r = kcat(kafka_broker.bootstrap, "-L", "-m", "5", password="wrong")
    assert r.returncode != 0
    assert "Authentication failed" in r.stderr or "SASL" in r.stderr, r.stderr
