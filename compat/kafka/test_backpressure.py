"""Kafka backpressure under the memory alarm: with a watermark of 1 byte the
alarm is always on, and every Produce is answered with throttle_time_ms
(Kafka's quota semantics). librdkafka reports it through throttle_cb, backs
off, and still delivers everything."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from test_kafka_clients import consume_confluent

ALARM_ON = {"POLYMQ_MEMORY_HIGH_WATERMARK_BYTES": "1"}


@pytest.fixture(autouse=True)
def _only_polymq(request):
    if request.config.getoption("--target") != "polymq":
        pytest.skip("needs a broker started with a tiny memory watermark")


@pytest.mark.parametrize("kafka_broker", [ALARM_ON], indirect=True)
def test_confluent_producer_is_throttled_and_delivers(kafka_broker, topic_name):
    throttles = []
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap, "acks": "all", "linger.ms": 0,
                  "throttle_cb": lambda ev: throttles.append(ev.throttle_time)})
    errors = []
    started = time.monotonic()
    for i in range(3):
        p.produce(topic_name, value=f"v{i}".encode(), on_delivery=lambda e, m: errors.append(e) if e else None)
        p.flush(30)
    took = time.monotonic() - started
    assert errors == []
    assert throttles and all(t >= 0.9 for t in throttles), throttles
    # Three produces, each followed by a second of back-off.
    assert took >= 2.0, f"three throttled produces took {took:.2f} s"
    got = consume_confluent(kafka_broker.bootstrap, topic_name, 3)
    assert [v for _, v in got] == [b"v0", b"v1", b"v2"]
