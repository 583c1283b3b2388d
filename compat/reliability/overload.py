"""A stopped consumer under full-rate publishing, from all three protocols.

Starts polymq with a small memory watermark (POLYMQ_MEMORY_HIGH_WATERMARK_BYTES),
sets up a consumer per protocol and stops it:

- MQTT: a persistent session (clean_session=False, QoS 1 on `overload/mqtt`),
  offline. Publisher: MQTT 5, QoS 1. Acknowledged = PUBACK.
- AMQP: a durable queue `overload-amqp` with no consumer. Publisher: pika with
  confirms, persistent messages. Acknowledged = basic.ack.
- Kafka: topic `overload-kafka`, nobody fetching. Producer: confluent-kafka,
  acks=all, idempotent. Acknowledged = delivery report without error.

The publishers run at full rate for --seconds while the broker's RSS
(/proc/<pid>/status VmRSS) is sampled every 0.5 s. Each protocol's
back-pressure is counted as its client sees it: MQTT PUBACKs withheld (gaps of
over 0.5 s with messages in flight), AMQP connection.blocked notifications,
Kafka throttle_time_ms (librdkafka's throttle_cb). Then the consumers start
and everything acknowledged must drain, exactly once.

    .venv/bin/python compat/reliability/overload.py --seconds 30 --watermark-mb 200
    POLYMQ_BIN=target/release/polymq .venv/bin/python compat/reliability/overload.py

Exit status 1 if RSS passed --rss-bound-mb, an acknowledged message was lost
or duplicated, or the drain did not finish.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_mixed import Broker, kafka_serves_produce  # noqa: E402

MQTT_TOPIC = "overload/mqtt"
MQTT_SESSION = "overload-sub"
AMQP_QUEUE = "overload-amqp"
KAFKA_TOPIC = "overload-kafka"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic() - self.t0, rss_bytes(self.pid)))
            except OSError:
                return
            self.stop.wait(self.every)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max((r for t, r in self.samples if since <= t <= until), default=0)


@dataclass
class Side:
    """One protocol's publisher and consumer outcome."""
    sent: int = 0
    acked: list[int] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    pressure: dict[str, float] = field(default_factory=dict)
    drain_s: float = 0.0
    error: str = ""
    #: When the publish now waiting for its acknowledgement was sent (0: none).
    waiting_since: float = 0.0

    def check(self) -> tuple[int, int]:
        """(lost, duplicated): acknowledged but not found; found more than once."""
        seen: dict[int, int] = {}
        for s in self.found:
            seen[s] = seen.get(s, 0) + 1
        return sum(1 for s in self.acked if s not in seen), sum(1 for n in seen.values() if n > 1)


def payload(seq: int, size: int) -> bytes:
    head = f"{seq}:".encode()
    return head + b"x" * max(0, size - len(head))


def seq_of(body: bytes) -> int:
    return int(body.split(b":", 1)[0])


# ---------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------

def mqtt_session(port: int, clean: bool):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=MQTT_SESSION, clean_session=clean)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    return c, connected


def mqtt_prepare(port: int) -> None:
    c, connected = mqtt_session(port, clean=False)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(30):
        raise RuntimeError("MQTT: no CONNACK")
    c.subscribe(MQTT_TOPIC, qos=1)
    if not subscribed.wait(30):
        raise RuntimeError("MQTT: no SUBACK")
    c.disconnect()
    c.loop_stop()


def mqtt_publish(port: int, side: Side, stop: threading.Event, size: int) -> None:
    import paho.mqtt.client as mqtt
    lock = threading.Lock()
    inflight: dict[int, int] = {}
    last_ack = [time.monotonic()]
    gaps = side.pressure
    gaps.update({"withheld_s": 0.0, "longest_wait_s": 0.0, "stalls": 0, "unacked_at_end": 0})

    early: set[int] = set()  # PUBACKs that beat publish() returning

    def on_publish(client, userdata, mid, reason_code, properties):
        now = time.monotonic()
        with lock:
            seq = inflight.pop(mid, None)
            if seq is None:
                early.add(mid)
            elif not reason_code.is_failure:
                side.acked.append(seq)
            gap = now - last_ack[0]
            last_ack[0] = now
        if gap > 0.5:
            gaps["withheld_s"] += gap
            gaps["stalls"] += 1
            gaps["longest_wait_s"] = max(gaps["longest_wait_s"], gap)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="overload-pub", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(64)
    c.on_publish = on_publish
    try:
        c.connect("127.0.0.1", port, clean_start=True)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        seq = 0
        while not stop.is_set():
            with lock:
                if not inflight:
                    last_ack[0] = time.monotonic()
            # Not under `lock`: paho calls on_publish holding its own lock.
            info = c.publish(MQTT_TOPIC, payload(seq, size), qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with lock:
                    if info.mid in early:
                        early.discard(info.mid)
                        side.acked.append(seq)
                    else:
                        inflight[info.mid] = seq
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                seq += 1
                side.sent = seq
            elif info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.002)
            else:
                side.error = f"publish rc {info.rc}"
                break
        # Let the last acknowledgements in (they may be withheld a while).
        deadline = time.monotonic() + 30
        while inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        with lock:
            if inflight:
                wait = time.monotonic() - last_ack[0]
                gaps["withheld_s"] += wait
                gaps["stalls"] += 1
                gaps["longest_wait_s"] = max(gaps["longest_wait_s"], wait)
                gaps["unacked_at_end"] = len(inflight)
        c.disconnect()
    except Exception as e:
        side.error = repr(e)
    finally:
        c.loop_stop()


def mqtt_drain(port: int, side: Side, idle: float) -> None:
    c, connected = mqtt_session(port, clean=False)
    last = [time.monotonic()]

    def on_message(client, userdata, msg):
        side.found.append(seq_of(msg.payload))
        last[0] = time.monotonic()

    c.on_message = on_message
    t0 = time.monotonic()
    c.connect("127.0.0.1", port)
    c.loop_start()
    connected.wait(30)
    while time.monotonic() - last[0] < idle:
        time.sleep(0.1)
    side.drain_s = last[0] - t0
    c.disconnect()
    c.loop_stop()


# ---------------------------------------------------------------------------
# AMQP
# ---------------------------------------------------------------------------

def amqp_params(port: int):
    import pika
    return pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F?heartbeat=0")


def amqp_prepare(port: int) -> None:
    import pika
    conn = pika.BlockingConnection(amqp_params(port))
    conn.channel().queue_declare(AMQP_QUEUE, durable=True)
    conn.close()


def amqp_publish(port: int, side: Side, stop: threading.Event, size: int) -> None:
    import pika
    blocked = side.pressure
    blocked.update({"blocked": 0, "unblocked": 0, "blocked_s": 0.0, "longest_confirm_wait_s": 0.0})
    since = [0.0]

    def on_blocked(conn, frame):
        blocked["blocked"] += 1
        since[0] = time.monotonic()

    def on_unblocked(conn, frame):
        blocked["unblocked"] += 1
        blocked["blocked_s"] += time.monotonic() - since[0]

    try:
        conn = pika.BlockingConnection(amqp_params(port))
        conn.add_on_connection_blocked_callback(on_blocked)
        conn.add_on_connection_unblocked_callback(on_unblocked)
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        seq = 0
        while not stop.is_set():
            side.waiting_since = time.monotonic()
            ch.basic_publish("", AMQP_QUEUE, payload(seq, size), props)
            wait = time.monotonic() - side.waiting_since
            side.waiting_since = 0.0
            blocked["longest_confirm_wait_s"] = max(blocked["longest_confirm_wait_s"], wait)
            side.acked.append(seq)
            seq += 1
            side.sent = seq
        conn.close()
    except Exception as e:
        side.error = repr(e)


def amqp_drain(port: int, side: Side, idle: float) -> None:
    import pika
    conn = pika.BlockingConnection(amqp_params(port))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    t0 = time.monotonic()
    last = t0
    for method, _, body in ch.consume(AMQP_QUEUE, inactivity_timeout=idle):
        if method is None:
            break
        side.found.append(seq_of(body))
        ch.basic_ack(method.delivery_tag)
        last = time.monotonic()
    side.drain_s = last - t0
    ch.cancel()
    conn.close()


# ---------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------

def kafka_publish(port: int, side: Side, stop: threading.Event, size: int) -> None:
    from confluent_kafka import Producer
    throttle = side.pressure
    throttle.update({"throttled_responses": 0, "throttle_ms": 0.0})

    def on_throttle(event):
        throttle["throttled_responses"] += 1
        throttle["throttle_ms"] += event.throttle_time * 1000

    def on_delivery(err, msg):
        if err is None:
            side.acked.append(seq_of(msg.value()))

    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "throttle_cb": on_throttle, "queue.buffering.max.messages": 20000})
    try:
        seq = 0
        while not stop.is_set():
            try:
                p.produce(KAFKA_TOPIC, payload(seq, size), on_delivery=on_delivery)
                seq += 1
                side.sent = seq
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        p.flush(60)
    except Exception as e:
        side.error = repr(e)


def kafka_drain(port: int, side: Side, idle: float) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "overload-drain",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(KAFKA_TOPIC, 0, OFFSET_BEGINNING)])
    t0 = time.monotonic()
    last = t0
    deadline = t0 + 600
    while time.monotonic() < deadline:
        m = c.poll(idle)
        if m is None:
            break
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        side.found.append(seq_of(m.value()))
        last = time.monotonic()
    side.drain_s = last - t0
    c.close()


# ---------------------------------------------------------------------------

PUBLISH = {"mqtt": mqtt_publish, "amqp": amqp_publish, "kafka": kafka_publish}
DRAIN = {"mqtt": mqtt_drain, "amqp": amqp_drain, "kafka": kafka_drain}
MB = 1024 * 1024


def run(seconds: float, watermark_mb: float, rss_bound_mb: int, size: int, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="polymq-overload-"))
    broker = Broker(work / "data", work, fsync=None, env={"POLYMQ_MEMORY_HIGH_WATERMARK_BYTES": str(int(watermark_mb * MB))})
    failed = False
    try:
        broker.start()
        assert broker.proc is not None
        protocols = [p for p in PUBLISH if p != "kafka" or kafka_serves_produce(broker.ports["kafka"])]
        mqtt_prepare(broker.ports["mqtt"])
        amqp_prepare(broker.ports["amqp"])
        sampler = RssSampler(broker.proc.pid)
        sampler.start()
        time.sleep(1.0)
        idle_rss = sampler.peak()
        print(f"overload: {seconds:.0f} s of full-rate publishing ({','.join(protocols)}, {size} B messages), "
              f"watermark {watermark_mb} MiB, bound {rss_bound_mb} MiB, idle RSS {idle_rss / MB:.0f} MiB, data {work}",
              flush=True)
        sides = {p: Side() for p in protocols}
        stop = threading.Event()
        threads = [threading.Thread(target=PUBLISH[p], args=(broker.ports[p], sides[p], stop, size), daemon=True)
                   for p in protocols]
        t_pub = time.monotonic() - sampler.t0
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        still = [p for p, t in zip(protocols, threads) if t.is_alive()]
        t_drain = time.monotonic() - sampler.t0
        peak_pub = sampler.peak(since=t_pub, until=t_drain)
        data_bytes = sum(f.stat().st_size for f in (work / "data").rglob("*") if f.is_file())
        for p in protocols:
            s = sides[p]
            if s.waiting_since:
                s.pressure["unconfirmed_for_s"] = time.monotonic() - s.waiting_since
            pressure = {k: round(v, 2) if isinstance(v, float) else v for k, v in s.pressure.items()}
            print(f"  publish {p}: sent {s.sent} acked {len(s.acked)} back-pressure {pressure}"
                  + (" (still blocked: the alarm had not cleared)" if p in still else "")
                  + (f" error {s.error}" if s.error else ""), flush=True)
        print(f"  peak RSS while publishing {peak_pub / MB:.0f} MiB; data directory {data_bytes / MB:.0f} MiB", flush=True)
        threads = [threading.Thread(target=DRAIN[p], args=(broker.ports[p], sides[p], 3.0), daemon=True)
                   for p in protocols]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        peak_drain = sampler.peak(since=t_drain)
        sampler.stop.set()
        total_in = sum(len(s.acked) for s in sides.values())
        for p in protocols:
            s = sides[p]
            lost, dup = s.check()
            failed |= bool(lost or dup or s.error or not s.acked)
            print(f"  drain {p}: acked {len(s.acked)} found {len(s.found)} lost {lost} duplicated {dup} "
                  f"in {s.drain_s:.1f} s", flush=True)
        peak = max(peak_pub, peak_drain)
        over = peak > rss_bound_mb * MB
        failed |= over
        print(f"overload total: {total_in} acknowledged messages in {seconds:.0f} s, peak RSS {peak / MB:.0f} MiB "
              f"(publishing {peak_pub / MB:.0f}, draining {peak_drain / MB:.0f}; bound {rss_bound_mb})", flush=True)
        rows = ["t_s,rss_bytes"] + [f"{t:.1f},{r}" for t, r in sampler.samples]
        (work / "rss.csv").write_text("\n".join(rows) + "\n")
        broker.stop()
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.proc.kill()
        if not keep and not failed:
            shutil.rmtree(work, ignore_errors=True)
    print("overload: " + ("FAILED" if failed else "ok: RSS stayed under the bound, everything acknowledged drained once"))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--watermark-mb", type=float, default=200)
    ap.add_argument("--rss-bound-mb", type=int, default=300, help="fail if the broker's RSS passes this")
    ap.add_argument("--size", type=int, default=512, help="message payload bytes")
    ap.add_argument("--keep", action="store_true", help="keep the data directory, logs and rss.csv")
    args = ap.parse_args()
    return run(args.seconds, args.watermark_mb, args.rss_bound_mb, args.size, args.keep)


if __name__ == "__main__":
    sys.exit(main())
