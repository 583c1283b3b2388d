#!/usr/bin/env python3
"""The Kafka client side of `polymq-bench kafka`: librdkafka, driven through
confluent-kafka, spawned by the bench tool (one process per producer or
consumer, so each client has its own interpreter and librdkafka instance).

    kafka_driver.py ROLE 'JSON CONFIG'

Roles: version, mock-broker, create-topic, produce, consume. Every role
prints JSON lines on stdout: {"progress": N} now and then (messages done so
far), and one {"result": {...}} at the end (or {"error": "..."}). The bench
tool reads them; nothing else is printed on stdout.

Why Python and not the `rdkafka` crate: the crate builds librdkafka from
source (cmake, minutes on a 2-core machine) for a benchmark-only dependency;
confluent-kafka ships librdkafka in its wheel, and the compat suite already
installs it (compat/kafka/requirements.txt). The hot paths (batching,
compression, the wire) are librdkafka's C either way; what Python adds per
message is one produce() call or one Message object, which the bench measures
separately (`kafka --bootstrap mock`: librdkafka's in-memory mock broker) so a
client-bound number can be recognised.

Latency: each payload starts with the send time (CLOCK_MONOTONIC ns,
little-endian u64; in paced runs the scheduled send time). Consumers
subtract it from their own CLOCK_MONOTONIC (one machine, one clock). When
the bench's own publishers wrote the stamps (`polymq-bench cross`: MQTT or
AMQP in, Kafka out) they are in the bench's clock: it asks `clock` on stdin
(answered at once with {"clock": CLOCK_MONOTONIC ns}) to measure the offset
and sends `offset N` before `go`, and the consumer adds N to every stamp. The
histogram uses the bench's buckets (hist.rs: 2^7 linear buckets per power of
two) and is sent as [bucket upper edge, count] pairs.
"""

import json
import os
import struct
import sys
import time

SUB_BITS = 7
SUB = 1 << SUB_BITS
STAMP = struct.Struct("<Q")
PROGRESS_EVERY_S = 0.5
# Consumers report more often: the bench stops a group once the members' sum
# reaches what was produced, and that sum comes from these lines.
CONSUMER_PROGRESS_NS = 100_000_000


class Control:
    """The bench's orders on stdin: `go <CLOCK_MONOTONIC ns>` (start then), then
    optionally `stop`. Without `control` in the config: start now, never stop
    early (for running a role by hand)."""

    def __init__(self, enabled):
        import threading

        self.go_ns = None if enabled else time.monotonic_ns()
        self.stop = False
        # ns to subtract from a payload's stamp to get this process's clock
        # (the bench's own publishers stamp with theirs; see `offset`).
        self.offset = 0
        self._go = threading.Event()
        if not enabled:
            self._go.set()
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in sys.stdin:
            word, _, arg = line.strip().partition(" ")
            if word == "go":
                self.go_ns = int(arg) if arg else time.monotonic_ns()
                self._go.set()
            elif word == "stop":
                self.stop = True
            elif word == "clock":
                # The bench measures the offset between its clock and ours.
                emit({"clock": time.monotonic_ns()})
            elif word == "offset":
                self.offset = int(arg)
        # stdin closed: the bench is gone or done with us.
        self.stop = True
        self._go.set()

    def wait_go(self):
        """Blocks until the start time; returns it."""
        emit({"ready": True})
        self._go.wait()
        if self.go_ns is None:
            self.go_ns = time.monotonic_ns()
        while time.monotonic_ns() < self.go_ns:
            time.sleep(min(0.01, (self.go_ns - time.monotonic_ns()) / 1e9))
        return self.go_ns


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def bucket_upper(v):
    """The largest value in v's bucket (hist.rs `upper(index(v))`)."""
    if v < SUB:
        return v
    shift = v.bit_length() - 1 - SUB_BITS
    return ((v >> shift) << shift) + ((1 << shift) - 1)


def histogram(samples):
    counts = {}
    for v in samples:
        u = bucket_upper(v if v > 0 else 0)
        counts[u] = counts.get(u, 0) + 1
    return {"buckets": sorted(counts.items()), "max": max(samples) if samples else 0, "count": len(samples)}


def client_info():
    import confluent_kafka

    v = confluent_kafka.version()
    return {
        "client": "confluent-kafka",
        # A string in some releases, a (string, int) tuple in others.
        "client_version": v[0] if isinstance(v, tuple) else v,
        "librdkafka": confluent_kafka.libversion()[0],
        "python": sys.version.split()[0],
    }


def common(cfg):
    return {
        "bootstrap.servers": cfg["bootstrap"],
        # One broker on loopback: no reason to wait long for metadata.
        "topic.metadata.refresh.interval.ms": 10000,
        "socket.nagle.disable": True,
        "client.id": "polymq-bench",
    }


def role_version(_cfg):
    emit({"result": client_info()})


def role_mock_broker(cfg):
    """librdkafka's built-in mock cluster (in-memory, one broker) on a
    loopback port: the null sink that tells how fast the client alone can
    go. Runs until stdin closes."""
    from confluent_kafka import Producer

    p = Producer({"test.mock.num.brokers": 1, "client.id": "polymq-bench-mock"})
    md = p.list_topics(timeout=10)
    b = next(iter(md.brokers.values()))
    emit({"result": {"bootstrap": f"{b.host}:{b.port}", "pid": os.getpid()}})
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass


def role_create_topic(cfg):
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient(common(cfg))
    futures = a.create_topics([NewTopic(cfg["topic"], num_partitions=cfg["partitions"], replication_factor=1)],
                              operation_timeout=30, request_timeout=30)
    for _t, f in futures.items():
        try:
            f.result(timeout=60)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    # Wait until the metadata shows every partition with a leader.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = a.list_topics(cfg["topic"], timeout=10).topics.get(cfg["topic"])
        if md is not None and md.error is None and len(md.partitions) >= cfg["partitions"] \
                and all(p.leader >= 0 for p in md.partitions.values()):
            emit({"result": {"partitions": len(md.partitions)}})
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {cfg['topic']} has no leader for all {cfg['partitions']} partitions after 30 s")


def role_produce(cfg):
    from confluent_kafka import KafkaException, Producer

    conf = common(cfg)
    conf.update({
        "acks": str(cfg["acks"]),
        "linger.ms": cfg["linger_ms"],
        "batch.size": cfg["batch_bytes"],
        "compression.type": cfg["compression"],
        "enable.idempotence": bool(cfg.get("idempotence", False)),
        # Deep enough that the producer rarely waits on its own queue.
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": max(1_000_000, cfg["batch_bytes"] + 65536, cfg["size"] * 2 + 65536),
    })
    conf.update(cfg.get("extra", {}))
    errors = []
    state = {"ok": 0, "err": 0}
    lats = []

    # A delivery report costs a Python call per message (about a third of a
    # 100 B producer's CPU), so only every `sample`-th message asks for one:
    # its ack latency and its error, if any. librdkafka fails or acks a whole
    # batch together, so a failing batch shows in the sampled reports too.
    def on_delivery(err, msg):
        if err is not None:
            state["err"] += 1
            if len(errors) < 3:
                errors.append(str(err))
            return
        state["ok"] += 1
        lat = msg.latency()
        if lat is not None:
            lats.append(int(lat * 1e9))

    def on_error(e):
        if len(errors) < 3:
            errors.append(f"client: {e}")

    p = Producer(conf, error_cb=on_error)
    topic = cfg["topic"]
    size = cfg["size"]
    seconds = cfg["seconds"]
    limit = cfg.get("messages") or 0
    rate = float(cfg.get("rate") or 0.0)
    sample = max(1, int(cfg.get("sample", 16)))
    buf = bytearray(b"\x5a" * max(size, 8))
    pack = STAMP.pack_into
    clock = time.monotonic_ns
    produce = p.produce
    poll = p.poll
    sent = 0
    full_waits = 0
    # Connected and the topic known before the clock starts.
    p.list_topics(topic, timeout=30)
    ctl = Control(cfg.get("control", False))
    start_ns = ctl.wait_go()
    end_ns = start_ns + int(seconds * 1e9)
    next_progress = start_ns + int(PROGRESS_EVERY_S * 1e9)
    interval_ns = int(1e9 / rate) if rate > 0 else 0
    while not ctl.stop:
        now = clock()
        if now >= end_ns or (limit and sent >= limit):
            break
        if interval_ns:
            # Message k is due at start + k/rate and carries that time even if
            # it goes out late (no coordinated omission).
            due = start_ns + sent * interval_ns
            if due >= end_ns:
                break
            if due > now:
                poll(0)
                time.sleep(min(0.001, (due - now) / 1e9))
                continue
            stamp = due
        else:
            stamp = now
        pack(buf, 0, stamp)
        try:
            if sent % sample == 0:
                produce(topic, bytes(buf), on_delivery=on_delivery)
            else:
                produce(topic, bytes(buf))
            sent += 1
        except BufferError:
            full_waits += 1
            poll(0.001)
            continue
        except KafkaException as e:
            state["err"] += 1
            if len(errors) < 3:
                errors.append(str(e))
            continue
        if sent & 255 == 0:
            poll(0)
            if now >= next_progress:
                emit({"progress": sent - len(p)})
                next_progress = now + int(PROGRESS_EVERY_S * 1e9)
    produced_until = clock()
    left = p.flush(cfg.get("drain_seconds", 30))
    done = clock()
    sampled = state["ok"] + state["err"]
    # Errors of the unsampled messages, estimated from the sampled ones.
    est_err = 0 if sampled == 0 else round(state["err"] * (sent - left) / sampled)
    acked = max(0, sent - left - est_err)
    emit({"result": {
        "sent": sent,
        "acked": acked,
        "errors": est_err + left,
        "sampled_errors": state["err"],
        "unflushed": left,
        "queue_full_waits": full_waits,
        "start_ns": start_ns,
        "produced_ns": produced_until,
        "end_ns": done,
        "bytes": acked * size,
        "first_errors": errors,
        "ack_latency": histogram(lats),
    }})


def role_consume(cfg):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    conf = common(cfg)
    group = cfg.get("group")
    conf.update({
        "group.id": group or f"polymq-bench-assign-{os.getpid()}",
        "enable.auto.commit": bool(group),
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.max.bytes": cfg.get("fetch_max_bytes", 52_428_800),
        "max.partition.fetch.bytes": cfg.get("partition_max_bytes", 1_048_576),
        "fetch.wait.max.ms": cfg.get("fetch_wait_ms", 100),
        "queued.max.messages.kbytes": cfg.get("queued_kbytes", 262_144),
    })
    if group:
        conf["session.timeout.ms"] = 10000
        conf["heartbeat.interval.ms"] = 1000
    conf.update(cfg.get("extra", {}))
    c = Consumer(conf)
    topic = cfg["topic"]
    if group:
        c.subscribe([topic])
    else:
        md = c.list_topics(topic, timeout=30).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(md.partitions)])
    want_latency = bool(cfg.get("latency"))
    expect = cfg.get("expect") or 0
    seconds = cfg.get("seconds") or 60.0
    clock = time.monotonic_ns
    unpack = STAMP.unpack_from
    ctl = Control(cfg.get("control", False))
    t0 = ctl.wait_go()
    # Stamps in the bench's clock (its MQTT / AMQP publishers): ours = theirs + offset.
    offset = ctl.offset
    deadline = t0 + int(seconds * 1e9)
    first = last = 0
    count = nbytes = errors = 0
    first_errors = []
    lats = []
    last_progress = t0
    reported = 0
    while not ctl.stop:
        now = clock()
        if count != reported and now - last_progress > CONSUMER_PROGRESS_NS:
            emit({"progress": count})
            reported, last_progress = count, now
        if (expect and count >= expect) or now >= deadline:
            break
        if want_latency:
            # consume(n, timeout) waits until n messages are there or the
            # timeout passes, which at a paced rate would add up to the whole
            # timeout to every latency: take the first message as soon as it
            # is there, then whatever else is already queued.
            m = c.poll(0.05)
            if m is None:
                continue
            msgs = [m] + c.consume(num_messages=10000, timeout=0)
        else:
            msgs = c.consume(num_messages=10000, timeout=0.05)
            if not msgs:
                continue
        now = clock()
        for m in msgs:
            e = m.error()
            if e is not None:
                if e.code() != KafkaError._PARTITION_EOF:
                    errors += 1
                    if len(first_errors) < 3:
                        first_errors.append(str(e))
                continue
            v = m.value()
            count += 1
            nbytes += len(v)
            if want_latency:
                lats.append(now - unpack(v, 0)[0] - offset)
        if not first:
            first = now
        last = now
    emit({"progress": count})
    c.close()
    emit({"result": {
        "received": count,
        "bytes": nbytes,
        "errors": errors,
        "first_errors": first_errors,
        "start_ns": t0,
        "first_ns": first,
        "last_ns": last,
        "latency": histogram(lats),
    }})


ROLES = {
    "version": role_version,
    "mock-broker": role_mock_broker,
    "create-topic": role_create_topic,
    "produce": role_produce,
    "consume": role_consume,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ROLES:
        sys.stderr.write(__doc__)
        return 2
    cfg = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        ROLES[sys.argv[1]](cfg)
    except ImportError as e:
        emit({"error": f"missing client library: {e}"})
        return 3
    except Exception as e:  # noqa: BLE001 - the bench reports it
        emit({"error": f"{type(e).__name__}: {e}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
