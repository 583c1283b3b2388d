"""kill -9 of polymq under mixed load, many times, at random points.

Each iteration starts polymq (fsync=always) on one data directory, puts load
on it from every protocol it serves, kills it with SIGKILL after a random
0.3-2.5 s, restarts it on the same data, and reads everything back:

- MQTT: a QoS 1 publisher to `crash/<i>/mqtt`; a persistent session
  (clean_session=False, subscribed at QoS 1, then offline) holds what it gets.
  Acknowledged = PUBACK received. Read back by reconnecting that session.
- AMQP: a publisher with confirms into the durable queue `crash-<i>-amqp`,
  persistent messages. Acknowledged = basic.ack received. Read back with
  basic.get.
- Kafka (when the broker serves Produce): an idempotent producer with
  acks=all to topic `crash-<i>-kafka` (one partition). Acknowledged = delivery
  report without error. Read back from the beginning.

After each restart every acknowledged message must be there exactly once, in
publish order; unacknowledged ones may or may not be (they were in flight).
Prints a line per iteration and the totals; exit status 1 on any loss,
duplicate or reordering.

    .venv/bin/python compat/reliability/crash_mixed.py --iterations 50
    POLYMQ_BIN=target/release/polymq .venv/bin/python compat/reliability/crash_mixed.py

Needs the compat venv (paho-mqtt, pika, confluent-kafka): `compat/run` makes it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polymq_process import PolymqProcess  # noqa: E402


class Broker(PolymqProcess):
    """polymq on `data_dir`, restartable; `fsync=None` keeps the default
    policy, `env` adds variables (e.g. POLYMQ_MEMORY_HIGH_WATERMARK_BYTES)."""

    def __init__(self, data_dir: Path, log_dir: Path, fsync: str | None = "always", env: dict[str, str] | None = None):
        super().__init__(data_dir, log_dir, fsync=fsync, env=env, log="info,polymq_mqtt=debug")


def kafka_serves_produce(port: int) -> bool:
    """ApiVersions v0: does the broker list Produce (key 0)?"""
    header = struct.pack(">hhih", 18, 0, 1, 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack(">i", len(header)) + header)
            size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
            body = s.recv(size, socket.MSG_WAITALL)
    except OSError:
        return False
    _, error, count = struct.unpack(">ihi", body[:10])
    keys = [struct.unpack(">h", body[10 + 6 * i: 12 + 6 * i])[0] for i in range(count)]
    return error == 0 and 0 in keys and 1 in keys


@dataclass
class Tally:
    """One protocol's outcome in one iteration."""
    acked: list[int] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    error: str = ""

    def check(self) -> tuple[int, int, int]:
        """(lost, duplicated, out_of_order) among acknowledged messages."""
        seen: dict[int, int] = {}
        for s in self.found:
            seen[s] = seen.get(s, 0) + 1
        lost = sum(1 for s in self.acked if s not in seen)
        dup = sum(1 for s in self.acked if seen.get(s, 0) > 1)
        order = [s for s in self.found]
        out_of_order = sum(1 for a, b in zip(order, order[1:]) if b <= a)
        return lost, dup, out_of_order


# ---------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------

def mqtt_prepare(port: int, it: int) -> None:
    import paho.mqtt.client as mqtt
    # Clear any old session first. Wait for CONNACK and for the close: a
    # CONNECT still unprocessed when the next client connects would be
    # processed after it and take the client id over from it (the broker is
    # right to do so: the last CONNECT it reads wins), losing its SUBSCRIBE.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-sub-{it}", clean_session=True)
    connected, closed = threading.Event(), threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_disconnect = lambda *a: closed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(60):
        raise RuntimeError("no CONNACK within 60 s")
    c.disconnect()
    closed.wait(10)
    c.loop_stop()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-sub-{it}", clean_session=False)
    done = threading.Event()
    seen: list[str] = []
    c.on_connect = lambda cl, u, flags, rc, props: seen.append(f"CONNACK {rc}")
    c.on_disconnect = lambda cl, u, flags, rc, props: seen.append(f"disconnected {rc}")
    c.on_subscribe = lambda *a: (seen.append("SUBACK"), done.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    result = c.subscribe(f"crash/{it}/mqtt", qos=1)
    seen.append(f"subscribe() -> {result}")
    # Generous: a persistent session's SUBACK waits for an fsync (fsync=always),
    # which can take seconds on a disk busy with other work.
    if not done.wait(60):
        c.loop_stop()
        raise RuntimeError(f"no SUBACK within 60 s; client saw: {seen}")
    c.disconnect()
    c.loop_stop()


def mqtt_load(port: int, it: int, tally: Tally, stop: threading.Event) -> None:
    import paho.mqtt.client as mqtt
    lock = threading.Lock()
    mids: dict[int, int] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-pub-{it}", clean_session=True)
    c.max_inflight_messages_set(20)

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            seq = mids.pop(mid, None)
            if seq is not None:
                tally.acked.append(seq)

    c.on_publish = on_publish
    try:
        c.connect("127.0.0.1", port)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        seq = 0
        while not stop.is_set() and c.is_connected():
            with lock:
                info = c.publish(f"crash/{it}/mqtt", f"{it}:{seq}".encode(), qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                    break
                mids[info.mid] = seq
            seq += 1
            if len(mids) >= 20:
                time.sleep(0.001)
    except Exception as e:  # the broker dies under us: expected
        tally.error = repr(e)
    finally:
        c.loop_stop()


def mqtt_read(port: int, it: int) -> list[int]:
    import paho.mqtt.client as mqtt
    got: list[int] = []
    last = [time.monotonic()]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-sub-{it}", clean_session=False)

    def on_message(client, userdata, msg):
        got.append(int(msg.payload.decode().split(":")[1]))
        last[0] = time.monotonic()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    while time.monotonic() - last[0] < 2.0:
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return got


# ---------------------------------------------------------------------------
# AMQP
# ---------------------------------------------------------------------------

def amqp_params(port: int):
    import pika
    return pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F?heartbeat=0")


def amqp_prepare(port: int, it: int) -> None:
    import pika
    conn = pika.BlockingConnection(amqp_params(port))
    conn.channel().queue_declare(f"crash-{it}-amqp", durable=True)
    conn.close()


def amqp_load(port: int, it: int, tally: Tally, stop: threading.Event) -> None:
    import pika
    try:
        conn = pika.BlockingConnection(amqp_params(port))
        ch = conn.channel()
        ch.confirm_delivery()
        seq = 0
        props = pika.BasicProperties(delivery_mode=2)
        while not stop.is_set():
            ch.basic_publish("", f"crash-{it}-amqp", f"{it}:{seq}".encode(), props, mandatory=True)
            tally.acked.append(seq)
            seq += 1
    except Exception as e:
        tally.error = repr(e)


def amqp_read(port: int, it: int) -> list[int]:
    import pika
    conn = pika.BlockingConnection(amqp_params(port))
    ch = conn.channel()
    got = []
    while True:
        method, _, body = ch.basic_get(f"crash-{it}-amqp", auto_ack=True)
        if method is None:
            break
        got.append(int(body.decode().split(":")[1]))
    conn.close()
    return got


# ---------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------

def kafka_load(port: int, it: int, tally: Tally, stop: threading.Event) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "message.timeout.ms": 5000, "socket.timeout.ms": 2000})

    def on_delivery(err, msg):
        if err is None:
            tally.acked.append(int(msg.value().decode().split(":")[1]))

    try:
        seq = 0
        while not stop.is_set():
            try:
                p.produce(f"crash-{it}-kafka", f"{it}:{seq}".encode(), on_delivery=on_delivery)
                seq += 1
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        p.flush(6)
    except Exception as e:
        tally.error = repr(e)


def kafka_read(port: int, it: int) -> list[int]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": f"crash-verify-{it}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(f"crash-{it}-kafka", 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            if m.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                break
            continue
        got.append(int(m.value().decode().split(":")[1]))
    c.close()
    return got


# ---------------------------------------------------------------------------

PROTOCOLS = {
    "mqtt": (mqtt_prepare, mqtt_load, mqtt_read),
    "amqp": (amqp_prepare, amqp_load, amqp_read),
    "kafka": (None, kafka_load, kafka_read),
}


def run(iterations: int, seed: int, keep: bool, segment_mb: float | None = None) -> int:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="polymq-crash-"))
    env = {"POLYMQ_SEGMENT_BYTES": str(int(segment_mb * 1024 * 1024))} if segment_mb else None
    broker = Broker(work / "data", work, env=env)
    totals = {p: [0, 0, 0, 0, 0] for p in PROTOCOLS}  # acked, found, lost, dup, reordered
    failed = False
    try:
        broker.start()
        protocols = [p for p in PROTOCOLS if p != "kafka" or kafka_serves_produce(broker.ports["kafka"])]
        print(f"crash_mixed: {iterations} iterations, seed {seed}, protocols {','.join(protocols)}, "
              f"segments of {segment_mb or 'the default'} MiB, data {work}")
        for it in range(iterations):
            for p in protocols:
                prepare = PROTOCOLS[p][0]
                if prepare:
                    prepare(broker.ports[p], it)
            stop = threading.Event()
            tallies = {p: Tally() for p in protocols}
            threads = [threading.Thread(target=PROTOCOLS[p][1], args=(broker.ports[p], it, tallies[p], stop), daemon=True)
                       for p in protocols]
            for t in threads:
                t.start()
            delay = rng.uniform(0.3, 2.5)
            time.sleep(delay)
            broker.kill9()
            stop.set()
            for t in threads:
                t.join(20)
            broker.start()
            line = [f"#{it:03d} killed after {delay:.2f}s:"]
            for p in protocols:
                tally = tallies[p]
                tally.found = PROTOCOLS[p][2](broker.ports[p], it)
                lost, dup, order = tally.check()
                t = totals[p]
                t[0] += len(tally.acked)
                t[1] += len(tally.found)
                t[2] += lost
                t[3] += dup
                t[4] += order
                failed |= bool(lost or dup or order)
                line.append(f"{p} acked {len(tally.acked)} found {len(tally.found)} lost {lost} dup {dup} reordered {order};")
            print(" ".join(line), flush=True)
        broker.stop()
    except Exception:
        # A setup failure (no SUBACK, ...): keep the broker's logs to see why.
        failed = True
        print(f"crash_mixed: failed; logs kept in {work}", flush=True)
        raise
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.proc.kill()
        if not keep and not failed:
            shutil.rmtree(work, ignore_errors=True)
    for p, (acked, found, lost, dup, order) in totals.items():
        if acked or found:
            print(f"crash_mixed total {p}: acked {acked} found {found} lost {lost} duplicated {dup} reordered {order}")
    print("crash_mixed: " + ("FAILED" if failed else "ok: nothing acknowledged was lost, duplicated or reordered"))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    ap.add_argument("--segment-mb", type=float,
                    help="the broker's segment_bytes in MiB: small segments put rolls and reclaims under the kills")
    args = ap.parse_args()
    return run(args.iterations, args.seed, args.keep, args.segment_mb)


if __name__ == "__main__":
    sys.exit(main())
