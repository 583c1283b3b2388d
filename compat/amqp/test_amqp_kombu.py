"""kombu (py-amqp transport) against polymq."""

from __future__ import annotations

import socket
import time

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.simple import SimpleQueue


def test_simple_queue_round_trip(polymq):
    with Connection(polymq.url) as conn:
        q: SimpleQueue = conn.SimpleQueue("kombu-simple")
        q.put({"hello": "world", "n": [1, 2, 3]}, serializer="json", headers={"h": "v"})
        msg = q.get(block=True, timeout=10)
        assert msg.payload == {"hello": "world", "n": [1, 2, 3]}
        assert msg.headers == {"h": "v"}
        assert msg.content_type == "application/json"
        msg.ack()
        with pytest.raises(q.Empty):
            q.get(block=True, timeout=0.5)
        q.close()


def test_producer_consumer_topic_exchange_with_confirms(polymq):
    exchange = Exchange("kombu-topic", type="topic", durable=True)
    queues = [Queue("kombu-eu", exchange, routing_key="eu.#", durable=True),
              Queue("kombu-orders", exchange, routing_key="*.orders", durable=True)]
    with Connection(polymq.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn, exchange=exchange)
        for q in queues:
            q(conn.default_channel).declare()
        for key in ("eu.orders", "us.orders", "eu.users.x"):
            producer.publish({"key": key}, routing_key=key, serializer="json", delivery_mode=2)
        got: dict[str, list[str]] = {"kombu-eu": [], "kombu-orders": []}

        def make_cb(name):
            def on_message(body, message):
                got[name].append(body["key"])
                message.ack()
            return on_message

        consumers = [Consumer(conn.channel(), [q], callbacks=[make_cb(q.name)], prefetch_count=1) for q in queues]
        for c in consumers:
            c.consume()
        try:
            while sum(map(len, got.values())) < 4:
                conn.drain_events(timeout=10)
        except socket.timeout:
            pass
        for c in consumers:
            c.cancel()
        assert sorted(got["kombu-eu"]) == ["eu.orders", "eu.users.x"]
        assert sorted(got["kombu-orders"]) == ["eu.orders", "us.orders"]


def test_reject_requeue_then_redelivered(polymq):
    with Connection(polymq.url) as conn:
        q = conn.SimpleQueue("kombu-requeue")
        q.put("again")
        msg = q.get(timeout=10)
        assert not msg.delivery_info["redelivered"]
        msg.requeue()
        msg = q.get(timeout=10)
        assert msg.payload == "again" and msg.delivery_info["redelivered"]
        msg.ack()
        q.close()


def test_missing_queue_passive_declare_is_404(polymq):
    from amqp.exceptions import NotFound

    with Connection(polymq.url) as conn:
        with pytest.raises(NotFound):
            # Queue.declare() ignores `passive`; queue_declare takes it.
            Queue("kombu-missing")(conn.channel()).queue_declare(passive=True)
        # The connection survives a channel error.
        conn.SimpleQueue("kombu-after").put("ok")


def test_kombu_queue_arguments_dead_letter(polymq):
    dlx = Exchange("kombu-dlx", type="direct")
    dead = Queue("kombu-dead", dlx, routing_key="dead")
    work = Queue("kombu-work", queue_arguments={"x-dead-letter-exchange": "kombu-dlx", "x-dead-letter-routing-key": "dead"})
    with Connection(polymq.url) as conn:
        ch = conn.channel()
        dead(ch).declare()
        work(ch).declare()
        Producer(ch).publish({"job": 1}, routing_key="kombu-work", serializer="json")
        msg = work(ch).get(no_ack=False)
        for _ in range(50):
            if msg is not None:
                break
            time.sleep(0.1)
            msg = work(ch).get(no_ack=False)
        msg.reject(requeue=False)
        got = None
        for _ in range(50):
            got = dead(ch).get(no_ack=True)
            if got is not None:
                break
            time.sleep(0.1)
        assert got is not None and got.payload == {"job": 1}
        assert got.headers["x-death"][0]["reason"] == "rejected"
