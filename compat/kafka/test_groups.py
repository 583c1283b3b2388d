"""Consumer groups (classic protocol) with real clients: confluent-kafka
(librdkafka), kafka-python, and Debian's kcat if installed.

The broker runs with a 300 ms initial rebalance delay (the default is
Kafka's 3 s) so the suite stays quick, and 4 partitions per auto-created topic.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

# Auto-created topics get 4 partitions (tests that want fewer use only the
# first ones), whether or not CreateTopics is served.
FAST = {"POLYMQ_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "300", "POLYMQ_KAFKA_NUM_PARTITIONS": "4"}
pytestmark = pytest.mark.parametrize("kafka_broker", [FAST], indirect=True)


def group_name() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        for f in futures.values():
            f.result(timeout=15)
    except Exception:
        # CreateTopics may not be served yet: produce to every partition
        # instead (auto-creation makes the topic).
        pass


def produce(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        p.produce(topic, value=f"m{i}".encode(), partition=i % partitions)
    assert p.flush(30) == 0


def consumer(bootstrap: str, group: str, **extra) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    conf.update(extra)
    return Consumer(conf)


def drain(consumers, want: int, seen: dict, timeout: float = 30.0) -> None:
    """Polls every consumer in turn until `want` distinct messages are seen."""
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in seen.values()) < want and time.monotonic() < deadline:
        for c in consumers:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            seen.setdefault(id(c), []).append((m.partition(), m.offset(), m.value()))
            c.commit(message=m, asynchronous=False)


def all_values(seen: dict) -> list:
    return sorted(v for vs in seen.values() for (_, _, v) in vs)


def test_two_confluent_consumers_share_partitions_and_rebalance_when_one_leaves(kafka_broker, topic_name):
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 4)
    produce(bs, topic_name, 40, 4)
    group = group_name()
    a, b = consumer(bs, group), consumer(bs, group)
    a.subscribe([topic_name])
    b.subscribe([topic_name])
    seen: dict = {}
    drain([a, b], 40, seen)
    values = all_values(seen)
    assert len(values) == 40 and len(set(values)) == 40, "each message once across the members"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(a.assignment()) == 0 or len(b.assignment()) == 0):
        a.poll(0.1)
        b.poll(0.1)
    assert len(a.assignment()) + len(b.assignment()) == 4
    assert a.assignment() and b.assignment(), "both members own partitions"
    assert len(seen) == 2, "both members consumed"

    b.close()  # LeaveGroup: A takes every partition over
    produce(bs, topic_name, 20, 4)
    seen2: dict = {}
    drain([a], 20, seen2)
    assert len(all_values(seen2)) == 20, "A consumes the partitions B had, from B's commits"
    assert len(a.assignment()) == 4
    a.close()


def test_cooperative_sticky_rebalances_incrementally(kafka_broker, topic_name):
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 4)
    produce(bs, topic_name, 20, 4)
    group = group_name()
    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    a = consumer(bs, group, **coop)
    a.subscribe([topic_name])
    seen: dict = {}
    drain([a], 20, seen)
    assert len(a.assignment()) == 4
    b = consumer(bs, group, **coop)
    b.subscribe([topic_name])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (len(a.assignment()) == 2 and len(b.assignment()) == 2):
        a.poll(0.1)
        b.poll(0.1)
    assert (len(a.assignment()), len(b.assignment())) == (2, 2), "two rebalances: revoke, then assign"
    produce(bs, topic_name, 20, 4)
    seen2: dict = {}
    drain([a, b], 20, seen2)
    assert len(set(all_values(seen2))) == 20
    a.close()
    b.close()


def test_committed_offsets_survive_a_restart(kafka_broker, topic_name):
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 1)
    produce(bs, topic_name, 10, 1)
    group = group_name()
    c = consumer(bs, group)
    c.subscribe([topic_name])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m.value())
            c.commit(message=m, asynchronous=False)
    assert got == [f"m{i}".encode() for i in range(5)]
    c.close()

    kafka_broker.restart()
    bs = kafka_broker.bootstrap
    c = consumer(bs, group)
    committed = c.committed([TopicPartition(topic_name, 0)], timeout=15)
    assert committed[0].offset == 5
    c.subscribe([topic_name])
    rest, errors = [], []
    deadline = time.monotonic() + 30
    while len(rest) < 5 and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error():
            errors.append(m.error())
        elif m is not None:
            rest.append(m.value())
    assert rest == [f"m{i}".encode() for i in range(5, 10)], "resumes where it left off"
    assert errors == [], "the group's state is not kept across a restart, but the client must not see that"
    c.close()


def test_kafka_python_consumer_group(kafka_broker, topic_name):
    kafka = pytest.importorskip("kafka")
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 2)
    produce(bs, topic_name, 10, 2)
    group = group_name()
    c = kafka.KafkaConsumer(
        topic_name, bootstrap_servers=bs, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=20000,
    )
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == 10:
            break
    c.commit()
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(10))
    tp = kafka.TopicPartition(topic_name, 0)
    assert c.committed(tp) == 5
    c.close()


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)")
def test_kcat_balanced_consumer(kafka_broker, topic_name):
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 2)
    produce(bs, topic_name, 6, 2)
    group = group_name()
    out = subprocess.run(
        ["kcat", "-b", bs, "-G", group, "-o", "beginning", "-c", "6", "-e", "-f", "%s\\n", topic_name],
        capture_output=True, timeout=60, text=True,
    )
    lines = sorted(line for line in out.stdout.splitlines() if line)
    assert lines == sorted(f"m{i}" for i in range(6)), out.stderr[-2000:]


def test_admin_list_describe_delete_groups(kafka_broker, topic_name):
    bs = kafka_broker.bootstrap
    create_topic(bs, topic_name, 1)
    produce(bs, topic_name, 3, 1)
    group = group_name()
    c = consumer(bs, group)
    c.subscribe([topic_name])
    seen: dict = {}
    drain([c], 3, seen)
    admin = AdminClient({"bootstrap.servers": bs})
    listed = admin.list_consumer_groups().result(timeout=15)
    assert group in [g.group_id for g in listed.valid]
    desc = admin.describe_consumer_groups([group])[group].result(timeout=15)
    assert len(desc.members) == 1
    c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        d = admin.describe_consumer_groups([group])[group].result(timeout=15)
        if not d.members:
            break
        time.sleep(0.2)

    kafka_admin = pytest.importorskip("kafka.admin")
    ka = kafka_admin.KafkaAdminClient(bootstrap_servers=bs)
    listed_kp = ka.list_groups()
    assert group in [g["group_id"] for g in listed_kp]
    described = ka.describe_groups([group])
    assert described[group]["group_state"] == "Empty"
    assert described[group]["error"] is None
    offsets = ka.list_group_offsets(group)[group]
    assert [o.offset for o in offsets.values()] == [3]
    ka.close()

    admin.delete_consumer_groups([group])[group].result(timeout=15)
    listed = admin.list_consumer_groups().result(timeout=15)
    assert group not in [g.group_id for g in listed.valid]
