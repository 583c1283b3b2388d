"""Soak: steady mixed load from all three protocols for a long time, watching
for growth.

Starts polymq and, for --minutes, runs per protocol a publisher at --rate
messages/s and a live consumer: MQTT QoS 1 (publisher MQTT 5, subscriber
3.1.1), AMQP with confirms into a durable queue consumed with acks, Kafka
acks=all consumed by a consumer group (into a topic created with
--kafka-retention-ms, as a long-running topic is; 0 keeps everything, and
then the stream index grows by a few bytes per stored batch: RELIABILITY.md
"Known gaps"). Every message carries its send time,
so each consumer measures end-to-end latency. Every --interval seconds one
CSV row: elapsed time, the broker's RSS (/proc/<pid>/status), its open file
descriptors (/proc/<pid>/fd), and per protocol the messages delivered and
the p50/p99 latency of that interval. At the end it prints a linear fit of
RSS and open files over the second half of the run (growth per hour) and the
latency of the first and last intervals.

    .venv/bin/python compat/reliability/soak.py --minutes 30
    POLYMQ_BIN=target/release/polymq .venv/bin/python compat/reliability/soak.py --minutes 10 --csv soak.csv

Exit status 1 if RSS grew faster than --max-rss-growth-mb-per-hour over the
second half, open files grew at all (by more than 8 over the second half),
or a protocol stopped delivering.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_mixed import Broker, kafka_serves_produce  # noqa: E402
from overload import rss_bytes  # noqa: E402

MB = 1024 * 1024
PAD = b"p" * 200


class Latencies:
    """Latencies of one protocol's deliveries since the last take()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: list[float] = []
        self.total = 0

    def add(self, body: bytes) -> None:
        sent = float(body.split(b":", 1)[0])
        with self.lock:
            self.values.append(time.time() - sent)
            self.total += 1

    def take(self) -> tuple[int, float, float]:
        with self.lock:
            v, self.values = sorted(self.values), []
        if not v:
            return 0, float("nan"), float("nan")
        return len(v), v[len(v) // 2] * 1000, v[min(len(v) - 1, int(len(v) * 0.99))] * 1000


def body() -> bytes:
    return f"{time.time():.6f}:".encode() + PAD


def paced(rate: float, stop: threading.Event, send) -> None:
    """Calls send() `rate` times a second until stop."""
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        send()
        n += 1
        ahead = t0 + n / rate - time.monotonic()
        if ahead > 0:
            stop.wait(ahead)


def mqtt_run(port: int, rate: float, lat: Latencies, stop: threading.Event) -> None:
    import paho.mqtt.client as mqtt
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-sub", clean_session=True)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, *a: c.subscribe("soak/mqtt", qos=1)
    sub.on_message = lambda c, u, m: lat.add(m.payload)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(30)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-pub", protocol=mqtt.MQTTv5)
    pub.max_queued_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    paced(rate, stop, lambda: pub.publish("soak/mqtt", body(), qos=1))
    pub.disconnect()
    pub.loop_stop()
    time.sleep(1)
    sub.disconnect()
    sub.loop_stop()


def amqp_run(port: int, rate: float, lat: Latencies, stop: threading.Event) -> None:
    import pika
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F?heartbeat=30")
    conn = pika.BlockingConnection(params)
    conn.channel().queue_declare("soak-amqp", durable=True)
    conn.close()

    def consume() -> None:
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.basic_qos(prefetch_count=100)
        for method, _, b in ch.consume("soak-amqp", inactivity_timeout=1):
            if method is not None:
                lat.add(b)
                ch.basic_ack(method.delivery_tag)
            if stop.is_set():
                break
        ch.cancel()
        c.close()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    paced(rate, stop, lambda: ch.basic_publish("", "soak-amqp", body(), props))
    conn.close()
    consumer.join(10)


KAFKA_RETENTION_MS = 300_000


def kafka_run(port: int, rate: float, lat: Latencies, stop: threading.Event,
              retention_ms: int = KAFKA_RETENTION_MS) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    if retention_ms > 0:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        topic = NewTopic("soak-kafka", num_partitions=1, replication_factor=1,
                         config={"retention.ms": str(retention_ms)})
        for f in admin.create_topics([topic]).values():
            f.result(30)

    def consume() -> None:
        c = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "soak", "auto.offset.reset": "earliest"})
        c.subscribe(["soak-kafka"])
        while not stop.is_set():
            m = c.poll(0.5)
            if m is not None and not m.error():
                lat.add(m.value())
        c.close()

    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all", "linger.ms": 1})
    p.produce("soak-kafka", body())  # creates the topic (if not yet) before the group joins
    p.flush(10)
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()

    def send() -> None:
        p.produce("soak-kafka", body())
        p.poll(0)

    paced(rate, stop, send)
    p.flush(10)
    consumer.join(10)


RUN = {"mqtt": mqtt_run, "amqp": amqp_run, "kafka": kafka_run}


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in points) / sxx * 3600


def run(minutes: float, interval: float, rate: float, csv_path: Path | None, max_rss_growth: float,
        keep: bool = False, only: list[str] | None = None, kafka_retention_ms: int = KAFKA_RETENTION_MS,
        segment_mb: float | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="polymq-soak-"))
    env = {"POLYMQ_SEGMENT_BYTES": str(int(segment_mb * MB))} if segment_mb else None
    broker = Broker(work / "data", work, fsync=None, env=env)
    failed = False
    rows: list[dict] = []
    try:
        broker.start()
        assert broker.proc is not None
        pid = broker.proc.pid
        protocols = [p for p in (only or RUN) if p != "kafka" or kafka_serves_produce(broker.ports["kafka"])]
        print(f"soak: {minutes:g} min, {rate:g} msg/s per protocol ({','.join(protocols)}), "
              f"Kafka retention.ms {kafka_retention_ms or 'none'}, segments of {segment_mb or 'the default'} MiB, "
              f"sample every {interval:g} s, data {work}", flush=True)
        lats = {p: Latencies() for p in protocols}
        stop = threading.Event()
        run_of = {**RUN, "kafka": functools.partial(kafka_run, retention_ms=kafka_retention_ms)}
        threads = [threading.Thread(target=run_of[p], args=(broker.ports[p], rate, lats[p], stop), daemon=True)
                   for p in protocols]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        end = t0 + minutes * 60
        header = ["t_s", "rss_bytes", "open_fds", "segments"] + [f"{p}_{k}" for p in protocols for k in ("n", "p50_ms", "p99_ms")]
        out = open(csv_path, "w") if csv_path else None
        if out:
            out.write(",".join(header) + "\n")
        while time.monotonic() < end:
            time.sleep(min(interval, max(0.0, end - time.monotonic())))
            if broker.proc.poll() is not None:
                print(f"soak: the broker exited with {broker.proc.returncode}", flush=True)
                failed = True
                break
            row = {"t_s": round(time.monotonic() - t0, 1), "rss_bytes": rss_bytes(pid),
                   "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
                   "segments": sum(1 for f in (work / "data" / "log").iterdir() if f.suffix == ".log")}
            for p in protocols:
                n, p50, p99 = lats[p].take()
                row.update({f"{p}_n": n, f"{p}_p50_ms": round(p50, 2), f"{p}_p99_ms": round(p99, 2)})
            rows.append(row)
            if out:
                out.write(",".join(str(row[h]) for h in header) + "\n")
                out.flush()
            print("  " + " ".join(f"{h}={row[h]}" for h in header), flush=True)
        stop.set()
        for t in threads:
            t.join(30)
        if out:
            out.close()
        broker.stop()
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.proc.kill()
        if not keep and not failed:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 4:
        half = rows[len(rows) // 2:]
        rss_slope = slope_per_hour([(r["t_s"], r["rss_bytes"] / MB) for r in half])
        fd_slope = slope_per_hour([(r["t_s"], r["open_fds"]) for r in half])
        fd_growth = half[-1]["open_fds"] - half[0]["open_fds"]
        print(f"soak trend over the second half ({len(half)} samples): RSS {half[0]['rss_bytes'] / MB:.1f} -> "
              f"{half[-1]['rss_bytes'] / MB:.1f} MiB, fit {rss_slope:+.1f} MiB/h (peak "
              f"{max(r['rss_bytes'] for r in rows) / MB:.1f} MiB); open files {half[0]['open_fds']} -> "
              f"{half[-1]['open_fds']}, fit {fd_slope:+.1f}/h")
        for p in lats:
            first, last = rows[0], rows[-1]
            print(f"  {p}: delivered {lats[p].total}; latency p50/p99 first interval {first[f'{p}_p50_ms']}/"
                  f"{first[f'{p}_p99_ms']} ms, last {last[f'{p}_p50_ms']}/{last[f'{p}_p99_ms']} ms")
            stalled = [r["t_s"] for r in half if r[f"{p}_n"] == 0]
            if stalled:
                print(f"  {p}: no delivery in the intervals ending at {stalled}")
                failed = True
        if rss_slope > max_rss_growth:
            failed = True
        if fd_growth > 8:
            failed = True
    print("soak: " + ("FAILED" if failed else "ok: no growth trend in RSS or open files, every protocol kept delivering"))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=10, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=200, help="messages/s per protocol")
    ap.add_argument("--csv", type=Path, help="write the samples here")
    ap.add_argument("--max-rss-growth-mb-per-hour", type=float, default=5)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--protocols", default="mqtt,amqp,kafka", help="comma-separated subset")
    ap.add_argument("--kafka-retention-ms", type=int, default=KAFKA_RETENTION_MS,
                    help="retention.ms of the Kafka topic (0: keep everything)")
    ap.add_argument("--segment-mb", type=float,
                    help="the broker's segment_bytes in MiB (default: the broker's 128): small segments make "
                         "rolls, compactions and reclaims happen many times within the run")
    args = ap.parse_args()
    only = [p for p in args.protocols.split(",") if p in RUN]
    return run(args.minutes, args.interval, args.rate, args.csv, args.max_rss_growth_mb_per_hour, args.keep, only,
               args.kafka_retention_ms, args.segment_mb)


if __name__ == "__main__":
    sys.exit(main())
