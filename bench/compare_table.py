#!/usr/bin/env python3
"""Side-by-side markdown from polymq-bench JSON lines (bench/compare.sh calls this).

  compare_table.py --polymq P.jsonl --peer mosquitto=M.jsonl [--peer-version mosquitto=...] [--commit C]
  compare_table.py --protocol amqp --polymq P.jsonl [--variant polymq-always=PA.jsonl] --peer rabbitmq=R.jsonl
  compare_table.py --protocol kafka --polymq P.jsonl --baselines B.jsonl [--peer tansu=T.jsonl] [--variant mock=M.jsonl]
  compare_table.py --protocol cross --polymq P.jsonl   # cross-protocol beside same-protocol, polymq only
  compare_table.py --baseline-values B.jsonl   # "DISK_MBPS BUFFERED_MBPS LOOPBACK_MBPS" for compare.sh
  compare_table.py --human FILE.jsonl      # one broker's rows as plain aligned tables

Ratios are polymq / peer: above 1 means polymq does more (msg/s, conn/s) or
uses more (latency, memory, CPU); the column header says which way is better.
"""

import argparse
import json
import math
import sys


def load(path):
    out = {"machine": {}, "mqtt": [], "conns": [], "amqp": [], "amqp_queues": [], "notes": [], "settings": {},
           "amqp_settings": {}, "kafka": [], "kafka_settings": {}, "disk": [], "loopback": [],
           "cross": [], "cross_settings": {}}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            kind = obj.pop("kind", "")
            if kind == "machine":
                out["machine"] = obj
            elif kind == "mqtt settings":
                out["settings"] = obj
            elif kind == "amqp settings":
                out["amqp_settings"] = obj
            elif kind == "kafka settings":
                out["kafka_settings"] = obj
            elif kind == "cross settings":
                out["cross_settings"].update(obj)
            elif kind.startswith("cross:"):
                out["cross"].append(obj)
            elif kind.startswith("kafka:"):
                out["kafka"].append(obj)
            elif kind.startswith("disk: sequential"):
                out["disk"].append(obj)
            elif kind.startswith("loopback:"):
                out["loopback"].append(obj)
            elif kind.startswith("amqp-queues:"):
                out["amqp_queues"].append(obj)
            elif kind.startswith("amqp:"):
                out["amqp"].append(obj)
            elif kind.startswith("mqtt-conns:"):
                out["conns"].append(obj)
            elif kind.startswith("mqtt:"):
                out["mqtt"].append(obj)
            elif kind == "note":
                out["notes"].append(obj.get("text", ""))
    return out


def num(v):
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def fmt(v, decimals=0):
    v = num(v)
    if v is None:
        return "-"
    if decimals == 0:
        return f"{v:,.0f}"
    return f"{v:,.{decimals}f}"


def ratio(a, b, decimals=2):
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{decimals}f}x"


def key(row):
    return (row.get("scenario"), row.get("qos"), row.get("mode"), row.get("session", "clean"), row.get("clients"), row.get("size"))


def medians(rows):
    """One row per key: with repeated runs, the run with the median recv msg/s
    (the whole row, so its latencies belong to the same run); `runs` and the
    range of recv msg/s are added."""
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, g in groups.items():
        g = sorted(g, key=lambda r: num(r.get("recv/s")) or 0)
        pick = dict(g[(len(g) - 1) // 2])
        pick["runs"] = len(g)
        pick["recv_min"], pick["recv_max"] = g[0].get("recv/s"), g[-1].get("recv/s")
        out[k] = pick
    return out


def human(path):
    data = load(path)
    for name, rows in (("mqtt", data["mqtt"]), ("mqtt-conns", data["conns"]), ("amqp", data["amqp"]),
                       ("amqp-queues", data["amqp_queues"]), ("kafka", data["kafka"]), ("cross", data["cross"]), ("disk", data["disk"]),
                       ("loopback", data["loopback"])):
        if not rows:
            continue
        cols = []
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        def cell(v):
            if isinstance(v, float):
                return fmt(v, 0 if abs(v) >= 1000 else 2)
            if isinstance(v, int):
                return fmt(v)
            return "-" if v is None else str(v)

        cells = [[cell(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print(f"== {name}")
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for row in cells:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        print()
    for n in data["notes"]:
        print(n)


def compare(args):
    p = load(args.polymq)
    versions = dict(v.split("=", 1) for v in args.peer_version)
    m = p["machine"]
    print(f"# MQTT: polymq against {', '.join(name for name, _ in (x.split('=', 1) for x in args.peer))}\n")
    print(f"- date: {m.get('date', '?')}; machine: {m.get('nproc', '?')} vCPU ({m.get('cpu', '?')}), "
          f"{fmt(m.get('mem_gib'), 1)} GiB, kernel {m.get('kernel', '?')}")
    print("- the load generator (polymq-bench, rumqttc clients, one process) runs on the same cores as the broker, "
          "so every number is broker + clients sharing 2 cores; `bench%` is the clients' CPU, `cpu%` the broker's "
          "(% of one core)")
    print(f"- polymq: commit {args.commit}, `polymq serve` defaults (fsync interval=50: every message is written to "
          "the log), fresh data dir")
    s = p["settings"]
    print(f"- runs: {args.seconds} s of publishing each, payload {s.get('size', '?')} B, MQTT 3.1.1, clean session, "
          f"QoS 1/2 window {s.get('inflight', '?')} per publisher; latency = publish (paced runs: scheduled send time) "
          "to delivery")
    for spec in args.peer:
        name, _ = spec.split("=", 1)
        if name in versions:
            print(f"- {name}: {versions[name]}" + (", persistence off, max_queued_messages 10000000, other settings default"
                                                    if name == "mosquitto" else ""))
    if str(args.repeat) != "1":
        print(f"- every scenario ran {args.repeat} times per broker, interleaved; each row is the run with the median "
              "recv msg/s, and `range` gives the lowest and highest recv msg/s of the runs")
    print("- ratios are polymq / peer. msg/s: higher is better for polymq; latency, memory: lower is better")
    print()

    for spec in args.peer:
        name, path = spec.split("=", 1)
        q = load(path)
        peer_rows = medians(q["mqtt"])
        print(f"## Throughput and latency: polymq vs {name}\n")
        print(f"| scenario | QoS | mode | session | clients | recv msg/s polymq | {name} | ratio | sent msg/s polymq | {name} | ratio "
              f"| p50 ms polymq / {name} | p99 ms polymq / {name} | p99.9 ms polymq / {name} | p99 ratio "
              f"| lost % polymq / {name} | errors | cpu% polymq / {name} | bench% polymq / {name} |"
              + (f" range recv msg/s polymq / {name} |" if str(args.repeat) != "1" else ""))
        print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
              + (" ---: |" if str(args.repeat) != "1" else ""))
        own_rows = medians(p["mqtt"])
        keys = list(own_rows) + [k for k in peer_rows if k not in own_rows]
        for k in keys:
            r, o = own_rows.get(k), peer_rows.get(k, {})
            if r is None:
                r = {"scenario": k[0], "qos": k[1], "mode": k[2], "session": k[3], "clients": k[4]}
            pair = lambda k, d=0: f"{fmt(r.get(k), d)} / {fmt(o.get(k), d)}"
            print(f"| {r.get('scenario')} | {r.get('qos')} | {r.get('mode')} | {r.get('session', 'clean')} | {r.get('clients')} "
                  f"| {fmt(r.get('recv/s'))} | {fmt(o.get('recv/s'))} | **{ratio(r.get('recv/s'), o.get('recv/s'))}** "
                  f"| {fmt(r.get('sent/s'))} | {fmt(o.get('sent/s'))} | {ratio(r.get('sent/s'), o.get('sent/s'))} "
                  f"| {pair('p50_ms', 2)} | {pair('p99_ms', 2)} | {pair('p99.9_ms', 2)} | {ratio(r.get('p99_ms'), o.get('p99_ms'))} "
                  f"| {pair('lost%', 2)} | {fmt(r.get('errors'))} / {fmt(o.get('errors'))} "
                  f"| {pair('broker_cpu%')} | {pair('bench_cpu%')} |"
                  + (f" {fmt(r.get('recv_min'))}-{fmt(r.get('recv_max'))} / {fmt(o.get('recv_min'))}-{fmt(o.get('recv_max'))} |"
                     if str(args.repeat) != "1" else ""))
        print()
        busy = [x for x in p["mqtt"] + q["mqtt"] if (num(x.get("others%")) or 0) > 10]
        if busy:
            print(f"{len(busy)} of these runs had other processes take more than 10 % of the machine "
                  f"(others% up to {max(num(x.get('others%')) or 0 for x in busy):.0f}); read them with care.\n")

        if p["conns"] or q["conns"]:
            print(f"## Idle connections: polymq vs {name}\n")
            print(f"| connections | metric | polymq | {name} | ratio |")
            print("| ---: | --- | ---: | ---: | ---: |")
            peer_conns = {c.get("conns"): c for c in q["conns"]}
            own_conns = {c.get("conns"): c for c in p["conns"]}
            for n_conns in list(own_conns) + [n for n in peer_conns if n not in own_conns]:
                c, o = own_conns.get(n_conns, {"conns": n_conns}), peer_conns.get(n_conns, {})
                n = fmt(c.get("conns"))
                for label, k, d in (("connected (failed / dropped)", None, 0), ("connects/s", "conn/s", 0),
                                    ("connect p99 ms", "connect_p99_ms", 2), ("broker RSS before, MiB", "rss_before_MiB", 1),
                                    ("broker RSS with the connections, MiB", "rss_held_MiB", 1),
                                    ("**broker RSS per connection, bytes**", "bytes/conn", 0)):
                    if k is None:
                        pv = f"{fmt(c.get('connected'))} ({fmt(c.get('failed'))} / {fmt(c.get('dropped'))})"
                        ov = f"{fmt(o.get('connected'))} ({fmt(o.get('failed'))} / {fmt(o.get('dropped'))})" if o else "-"
                        print(f"| {n} | {label} | {pv} | {ov} | |")
                    else:
                        print(f"| {n} | {label} | {fmt(c.get(k), d)} | {fmt(o.get(k), d)} | {ratio(c.get(k), o.get(k))} |")
            print()

        notes = [("polymq", t) for t in p["notes"]] + [(name, t) for t in q["notes"]]
        if notes:
            print("Errors and notes reported by the runs:\n")
            for who, t in notes:
                print(f"- {who}: {t}")
            print()


def amqp_key(row):
    return (row.get("scenario"), row.get("queues"), row.get("mode"), row.get("pubs"), row.get("subs"), row.get("size"))


def amqp_medians(rows):
    """As `medians`, for AMQP rows (median by consumed msg/s)."""
    groups = {}
    for r in rows:
        groups.setdefault(amqp_key(r), []).append(r)
    out = {}
    for k, g in groups.items():
        g = sorted(g, key=lambda r: num(r.get("recv/s")) or 0)
        pick = dict(g[(len(g) - 1) // 2])
        pick["runs"] = len(g)
        pick["recv_min"], pick["recv_max"] = g[0].get("recv/s"), g[-1].get("recv/s")
        out[k] = pick
    return out


def compare_amqp(args):
    p = load(args.polymq)
    versions = dict(v.split("=", 1) for v in args.peer_version)
    variants = [(v.split("=", 1)[0], load(v.split("=", 1)[1])) for v in args.variant]
    m = p["machine"]
    peers = [x.split("=", 1) for x in args.peer]
    print(f"# AMQP 0-9-1: polymq against {', '.join(name for name, _ in peers) or 'nobody'}\n")
    print(f"- date: {m.get('date', '?')}; machine: {m.get('nproc', '?')} vCPU ({m.get('cpu', '?')}), "
          f"{fmt(m.get('mem_gib'), 1)} GiB, kernel {m.get('kernel', '?')}")
    print("- the load generator (polymq-bench, lapin clients, one process) runs on the same cores as the broker, "
          "so every number is broker + clients sharing the machine; `cpu%` is the broker's CPU, `bench%` the "
          "clients' (% of one core)")
    print(f"- polymq: commit {args.commit}, `polymq serve` defaults (fsync interval=50: a publish is confirmed once "
          "it is written to the log, which is fsynced every 50 ms), fresh data dir")
    for name, _ in variants:
        if name == "polymq-always":
            print("- polymq-always: the same binary with `--fsync always`: a publish is confirmed only after the "
                  "fsync that covers it (group commit)")
    for name, _ in peers:
        if name in versions:
            extra = (": a private node, no plugins, default settings (classic queues). It confirms a persistent "
                     "message routed to a durable queue once it is on disk: the message store fsyncs in batches "
                     "(when the queue goes idle or after a few hundred ms), and the confirms wait for that fsync"
                     if name == "rabbitmq" else "")
            print(f"- {name}: {versions[name]}{extra}")
    s = p["amqp_settings"]
    print(f"- runs: {args.seconds} s of publishing each, payload {s.get('size', '?')} B, persistent messages "
          f"(delivery_mode 2) to durable queues, publisher confirms (window {s.get('confirm_window', '?')} per "
          f"publisher), manual acks (prefetch {s.get('prefetch', '?')}, multi-ack {s.get('multi_ack', '?')}), "
          f"{s.get('connections', '?')} connections; one channel per publisher and consumer")
    print("- msg/s: `confirm/s` = publishes confirmed per second, `recv/s` = deliveries consumed (and acked) per "
          "second; latency e2e = publish call (paced runs: scheduled send time) to delivery; confirm = publish "
          "call to basic.ack")
    if str(args.repeat) != "1":
        print(f"- every scenario ran {args.repeat} times per broker, interleaved; each row is the run with the "
              "median recv msg/s")
    print("- `busy% before`: how busy the machine was (all cores) just before the run; `others% during`: the share "
          "of the machine that processes other than the broker and the load generator took during the run")
    print("- ratios are polymq / peer: msg/s higher is better for polymq; latency, memory lower is better")
    print()

    own = amqp_medians(p["amqp"])
    var_rows = [(name, amqp_medians(d["amqp"])) for name, d in variants]
    for name, path in peers:
        q = load(path)
        theirs = amqp_medians(q["amqp"])
        vn = [v for v, _ in var_rows]
        print(f"## Durable publish-with-confirms + consume-with-ack: polymq vs {name}\n")
        head = (f"| scenario | queues | pubs/subs | mode | recv msg/s polymq | "
                + "".join(f"{v} | " for v in vn)
                + f"{name} | **ratio** | "
                + "".join(f"ratio {v} | " for v in vn)
                + f"confirm msg/s polymq / {'/ '.join(vn + [name])} | e2e p50 ms | e2e p99 ms | e2e p99.9 ms "
                f"| confirm p99 ms | lost % | errors | cpu% | bench% | busy% before | others% during |")
        print(head)
        print("| --- | ---: | ---: | --- | ---: | " + "---: | " * len(vn) + "---: | ---: | " + "---: | " * len(vn)
              + "---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        keys = list(own) + [k for k in theirs if k not in own]
        for k in keys:
            r = own.get(k) or {"scenario": k[0], "queues": k[1], "mode": k[2], "pubs": k[3], "subs": k[4]}
            o = theirs.get(k, {})
            vs = [vr.get(k, {}) for _, vr in var_rows]
            allr = [r] + vs + [o]
            def several(key, d=0):
                return " / ".join(fmt(x.get(key), d) for x in allr)
            print(f"| {r.get('scenario')} | {r.get('queues')} | {r.get('pubs')}/{r.get('subs')} | {r.get('mode')} "
                  f"| {fmt(r.get('recv/s'))} | " + "".join(f"{fmt(v.get('recv/s'))} | " for v in vs)
                  + f"{fmt(o.get('recv/s'))} | **{ratio(r.get('recv/s'), o.get('recv/s'))}** | "
                  + "".join(f"{ratio(v.get('recv/s'), o.get('recv/s'))} | " for v in vs)
                  + f"{several('confirm/s')} | {several('p50_ms', 2)} | {several('p99_ms', 2)} "
                  f"| {several('p99.9_ms', 2)} | {several('confirm_p99_ms', 2)} | {several('lost%', 2)} "
                  f"| {several('errors')} | {several('broker_cpu%')} | {several('bench_cpu%')} | {several('busy%')} "
                  f"| {several('others%')} |")
        print()
        busy = [x for x in p["amqp"] + q["amqp"] + sum((d["amqp"] for _, d in variants), [])
                if (num(x.get("others%")) or 0) > 10]
        if busy:
            print(f"{len(busy)} of these runs had other processes take more than 10 % of the machine "
                  f"(others% up to {max(num(x.get('others%')) or 0 for x in busy):.0f}); read them with care.\n")
        goal_rows = [k for k in keys if k[0] == "durable" and k[2] == "max"]
        if goal_rows:
            print(f"**Goal: durable publish-with-confirms + consume-with-ack at least 10x {name}** (flat out, "
                  "consumed msg/s):\n")
            for k in goal_rows:
                r, o = own.get(k, {}), theirs.get(k, {})
                rv, ov = num(r.get("recv/s")), num(o.get("recv/s"))
                met = "-" if rv is None or not ov else ("yes" if rv / ov >= 10 else "no")
                also = "".join(f"; {v}: {fmt(vr.get(k, {}).get('recv/s'))} msg/s = "
                               f"{ratio(vr.get(k, {}).get('recv/s'), ov)}" for v, vr in var_rows)
                print(f"- {k[1]} queue(s): {fmt(rv)} vs {fmt(ov)} msg/s = {ratio(rv, ov)}: met? **{met}**{also}")
            print()

        if p["amqp_queues"] or q["amqp_queues"]:
            print(f"## Queue capacity (durable queues declared on a fresh broker): polymq vs {name}\n")
            print(f"| queues | metric | polymq | {name} | ratio |")
            print("| ---: | --- | ---: | ---: | ---: |")
            own_q = {c.get("queues"): c for c in p["amqp_queues"]}
            their_q = {c.get("queues"): c for c in q["amqp_queues"]}
            for n in list(own_q) + [n for n in their_q if n not in own_q]:
                c, o = own_q.get(n, {}), their_q.get(n, {})
                for label, key, d in (("declared (failed)", None, 0), ("declare time, s", "declare_s", 2),
                                      ("**declares/s**", "declares/s", 0), ("declare p99 ms", "declare_p99_ms", 2),
                                      ("broker RSS before, MiB", "rss_before_MiB", 1),
                                      ("broker RSS with the queues, MiB", "rss_held_MiB", 1),
                                      ("**broker RSS per queue, bytes**", "bytes/queue", 0),
                                      ("deletes/s", "deletes/s", 0), ("broker cpu%", "broker_cpu%", 0),
                                      ("machine busy% before", "busy%", 0), ("others% during", "others%", 0)):
                    if key is None:
                        pv = f"{fmt(c.get('declared'))} ({fmt(c.get('failed'))})" if c else "-"
                        ov = f"{fmt(o.get('declared'))} ({fmt(o.get('failed'))})" if o else "-"
                        print(f"| {fmt(n)} | {label} | {pv} | {ov} | |")
                    else:
                        print(f"| {fmt(n)} | {label} | {fmt(c.get(key), d)} | {fmt(o.get(key), d)} "
                              f"| {ratio(c.get(key), o.get(key))} |")
            print()

        notes = ([("polymq", t) for t in p["notes"]] + [(v, t) for v, d in variants for t in d["notes"]]
                 + [(name, t) for t in q["notes"]])
        if notes:
            print("Errors and notes reported by the runs:\n")
            for who, t in notes:
                print(f"- {who}: {t}")
            print()


def baseline_values(path):
    """(O_DIRECT MB/s, buffered MB/s, loopback MB/s): medians of the baseline runs."""
    b = load(path)

    def median(xs):
        xs = sorted(x for x in xs if x is not None)
        return xs[len(xs) // 2] if xs else None

    direct = median(num(r.get("MB/s")) for r in b["disk"] if r.get("method") == "O_DIRECT + final fdatasync")
    buffered = median(num(r.get("MB/s")) for r in b["disk"] if r.get("method") == "buffered + final fdatasync")
    loop = median(num(r.get("MB/s")) for r in b["loopback"] if r.get("run") != "median")
    return direct, buffered, loop


def kafka_key(row):
    return (row.get("scenario"), row.get("size"), row.get("acks"), row.get("compression"))


def kafka_medians(rows):
    """As `medians`, for Kafka rows (median by MB/s)."""
    groups = {}
    for r in rows:
        groups.setdefault(kafka_key(r), []).append(r)
    out = {}
    for k, g in groups.items():
        g = sorted(g, key=lambda r: num(r.get("MB/s")) or 0)
        pick = dict(g[(len(g) - 1) // 2])
        pick["runs"] = len(g)
        out[k] = pick
    return out


def compare_kafka(args):
    p = load(args.polymq)
    versions = dict(v.split("=", 1) for v in args.peer_version)
    peers = [(x.split("=", 1)[0], load(x.split("=", 1)[1])) for x in args.peer]
    variants = [(v.split("=", 1)[0], load(v.split("=", 1)[1])) for v in args.variant]
    direct, buffered, loop = baseline_values(args.baselines) if args.baselines else (None, None, None)
    m = p["machine"]
    s = p["kafka_settings"]
    print(f"# Kafka: polymq against {', '.join(n for n, _ in peers) or 'nobody'}, the disk and loopback\n")
    print(f"- date: {m.get('date', '?')}; machine: {m.get('nproc', '?')} vCPU ({m.get('cpu', '?')}), "
          f"{fmt(m.get('mem_gib'), 1)} GiB, kernel {m.get('kernel', '?')}, data dir on {m.get('filesystem', '?')}")
    print(f"- client: {s.get('client', '?')}, one process per producer and consumer "
          f"({s.get('client_processes', '?')}), on the same 2 cores as the broker: `client cpu%` is their CPU, "
          "`broker cpu%` the broker's (% of one core)")
    print(f"- polymq: commit {args.commit}, `polymq serve` defaults (fsync interval=50), fresh data dir per setting; "
          "acks=1 and acks=all both answer once the batch is written to the log")
    for name, _ in peers:
        if name in versions:
            print(f"- {name}: {versions[name]}: keeps everything in memory, so it writes nothing to disk")
    for name, _ in variants:
        if name == "mock":
            print("- mock: librdkafka's own in-memory mock broker (`test.mock.num.brokers`), the client's ceiling on "
                  "this machine: what the same producers reach when the broker costs almost nothing")
    print(f"- runs: {args.seconds} s of producing per run, {s.get('partitions', '?')} partitions, linger.ms "
          f"{s.get('linger_ms', '?')}, batch.size {s.get('batch_bytes', '?')}; every broker freshly started for each "
          "setting, brokers back to back; consume = one consumer, all partitions assigned, from the earliest offset; "
          "group = a consumer group (subscribe, rebalance) reading the same topic")
    print(f"- baselines (same run): disk **{fmt(direct)} MB/s** (O_DIRECT, 1 MiB writes + fdatasync; buffered + "
          f"fdatasync {fmt(buffered)} MB/s), loopback **{fmt(loop)} MB/s** (one TCP connection, 1 MiB writes)")
    print("- MB/s counts record values (MB = 10^6 B); `busy%` is how busy the machine was before the run, "
          "`others%` what other processes took during it")
    print()

    own = kafka_medians(p["kafka"])
    theirs = [(n, kafka_medians(d["kafka"])) for n, d in peers]
    var = [(n, kafka_medians(d["kafka"])) for n, d in variants]
    cols = [n for n, _ in theirs] + [n for n, _ in var]
    others = theirs + var

    def table(scenario, title, goal_col, goal_of):
        keys = [k for k in own if k[0] == scenario] + [k for _, rows in others for k in rows if k[0] == scenario and k not in own]
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        print(f"## {title}\n")
        print(f"| size | acks | compression | polymq msg/s | polymq MB/s | {goal_col} | "
              + "".join(f"{n} MB/s | polymq / {n} | " for n in cols)
              + "p50 / p99 / p99.9 ms polymq | " + "".join(f"p99 ms {n} | " for n in cols)
              + "broker cpu% polymq / " + " / ".join(cols) + " | client cpu% polymq / " + " / ".join(cols)
              + " | broker write MB/s polymq | errors | busy% / others% |")
        print("| ---: | --- | --- | ---: | ---: | ---: | " + "---: | ---: | " * len(cols) + "---: | " + "---: | " * len(cols)
              + "---: | ---: | ---: | ---: | ---: |")
        for k in keys:
            r = own.get(k, {})
            o = [rows.get(k, {}) for _, rows in others]
            g = goal_of(num(r.get("MB/s")))
            print(f"| {k[1]} | {k[2]} | {k[3]} | {fmt(r.get('msg/s'))} | **{fmt(r.get('MB/s'), 1)}** | {g} | "
                  + "".join(f"{fmt(x.get('MB/s'), 1)} | {ratio(r.get('MB/s'), x.get('MB/s'))} | " for x in o)
                  + f"{fmt(r.get('p50_ms'), 1)} / {fmt(r.get('p99_ms'), 1)} / {fmt(r.get('p99.9_ms'), 1)} | "
                  + "".join(f"{fmt(x.get('p99_ms'), 1)} | " for x in o)
                  + " / ".join(fmt(x.get('broker_cpu%')) for x in [r] + o) + " | "
                  + " / ".join(fmt(x.get('client_cpu%')) for x in [r] + o) + " | "
                  + f"{fmt(r.get('broker_write_MB/s'), 1)} | {fmt(r.get('errors'))} | {fmt(r.get('busy%'))} / {fmt(r.get('others%'))} |")
        print()

    pct = lambda base: (lambda v: "-" if v is None or not base else f"{100 * v / base:.1f} %")
    table("produce", "Produce (N producers flat out into a fresh topic)", "% of disk (O_DIRECT)", pct(direct))
    table("consume", "Consume from the earliest offset (one consumer)", "% of loopback", pct(loop))
    table("group", "Consumer group (subscribe, read the same topic)", "% of loopback", pct(loop))

    e2e = [k for k in own if k[0] == "e2e"]
    if e2e:
        print("## End-to-end latency at a fixed rate (producers paced, one live consumer; ms from the scheduled "
              "send time in the payload to the consumer)\n")
        print("| size | broker | msg/s | p50 | p99 | p99.9 | broker cpu% | client cpu% |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in e2e:
            for name, rows in [("polymq", own)] + others:
                x = rows.get(k)
                if x:
                    print(f"| {k[1]} | {name} | {fmt(x.get('msg/s'))} | {fmt(x.get('p50_ms'), 2)} | {fmt(x.get('p99_ms'), 2)} "
                          f"| {fmt(x.get('p99.9_ms'), 2)} | {fmt(x.get('broker_cpu%'))} | {fmt(x.get('client_cpu%'))} |")
        print()

    prod = [r for k, r in own.items() if k[0] == "produce"]
    cons = [r for k, r in own.items() if k[0] in ("consume", "group")]
    best_p = max(prod, key=lambda r: num(r.get("MB/s")) or 0, default=None)
    best_c = max(cons, key=lambda r: num(r.get("MB/s")) or 0, default=None)
    print("## The goals\n")
    if best_p and direct:
        v = num(best_p.get("MB/s")) or 0
        print(f"- **produce at least 80 % of the disk's raw sequential write bandwidth**: best {fmt(v, 1)} MB/s "
              f"({best_p.get('size')} B, acks={best_p.get('acks')}, {best_p.get('compression')}) = "
              f"**{100 * v / direct:.1f} %** of {fmt(direct)} MB/s: met? **{'yes' if v >= 0.8 * direct else 'no'}**")
    if best_c and loop:
        v = num(best_c.get("MB/s")) or 0
        print(f"- **consume at least 80 % of loopback**: best {fmt(v, 1)} MB/s ({best_c.get('scenario')}, "
              f"{best_c.get('size')} B) = **{100 * v / loop:.1f} %** of {fmt(loop)} MB/s: met? "
              f"**{'yes' if v >= 0.8 * loop else 'no'}**")
    print()
    # A note repeated by every setting (the mock's skipped scenarios) is said once.
    notes = list(dict.fromkeys([("polymq", t) for t in p["notes"]] + [(n, t) for n, d in peers + variants for t in d["notes"]]))
    if notes:
        print("Errors and notes reported by the runs:\n")
        for who, t in notes:
            print(f"- {who}: {t}")
        print()


def compare_cross(args):
    """Each cross-protocol path beside the same-protocol run of the same shape
    on the same broker (there is no peer that crosses protocols)."""
    p = load(args.polymq)
    m = p["machine"]
    s = p["cross_settings"]
    print("# Cross-protocol: polymq only (no peer broker crosses protocols)\n")
    print(f"- date: {m.get('date', '?')}; machine: {m.get('nproc', '?')} vCPU ({m.get('cpu', '?')}), "
          f"{fmt(m.get('mem_gib'), 1)} GiB, kernel {m.get('kernel', '?')}")
    print(f"- polymq: commit {args.commit}, `polymq serve` defaults (fsync interval=50, `[mapping]` defaults: MQTT and "
          "`amq.topic` publishes also go to the Kafka topic of their first level when it exists; Kafka topics are not "
          "created from MQTT, so the run creates its topic first), one fresh broker for all runs")
    print(f"- MQTT->Kafka: {s.get('mqtt-kafka', '?')}. Reference MQTT->MQTT: the same publishers, one subscriber to "
          "`+` (fan-in, clean session: served from memory, while the Kafka path writes every message to the log)")
    print(f"- AMQP->MQTT: {s.get('amqp-mqtt', '?')}. Reference AMQP->AMQP: as many publishers with confirms to as many "
          "durable queues (default exchange), one consumer each, manual acks (through the log; a message that reaches "
          "only clean MQTT sessions is not written)")
    print(f"- runs: {args.seconds} s of publishing each, payload {s.get('size', '?')} B; latency = publish call (paced "
          "runs: scheduled send time) to delivery; the Kafka consumer is another process whose clock offset is "
          "measured first (error bound in the raw rows, `clock_error_ms`)")
    print("- `cost` = cross / same protocol: msg/s below 1 and latency above 1 is what crossing costs")
    print()
    mq = {r.get("mode"): r for r in p["mqtt"] if r.get("scenario") == "fan-in"}
    aq = {r.get("mode"): r for r in p["amqp"] if r.get("scenario") == "durable"}
    print("| path | mode | pubs -> subs | recv msg/s | recv MB/s | acked msg/s | p50 ms | p99 ms | p99.9 ms | lost % "
          "| errors | cpu% | bench% | cost: msg/s | cost: p99 | busy% / others% |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def line(path, r, ref, pubs, subs, acked):
        cost = (f"{ratio(r.get('recv/s'), ref.get('recv/s'))} | {ratio(r.get('p99_ms'), ref.get('p99_ms'))}"
                if ref is not None else "| ")
        print(f"| {path} | {r.get('mode')} | {pubs} -> {subs} | {fmt(r.get('recv/s'))} | {fmt(r.get('recv_MB/s'), 1)} "
              f"| {fmt(r.get(acked))} | {fmt(r.get('p50_ms'), 2)} | {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('p99.9_ms'), 2)} "
              f"| {fmt(r.get('lost%'), 2)} | {fmt(r.get('errors'))} | {fmt(r.get('broker_cpu%'))} | {fmt(r.get('bench_cpu%'))} "
              f"| {cost} | {fmt(r.get('busy%'))} / {fmt(r.get('others%'))} |")

    for r in p["cross"]:
        mode = r.get("mode")
        if r.get("scenario") == "mqtt-kafka":
            ref = mq.get(mode)
            if ref:
                line("MQTT->MQTT (same protocol)", ref, None, ref.get("clients"), 1, "sent/s")
            line("**MQTT->Kafka**", r, ref, r.get("pubs"), r.get("subs"), "sent/s")
        else:
            ref = aq.get(mode)
            if ref:
                line("AMQP->AMQP (same protocol)", ref, None, ref.get("pubs"), ref.get("subs"), "confirm/s")
            line("**AMQP->MQTT**", r, ref, r.get("pubs"), r.get("subs"), "sent/s")
    print()
    busy = [x for x in p["cross"] + p["mqtt"] + p["amqp"] if (num(x.get("others%")) or 0) > 10]
    if busy:
        print(f"{len(busy)} of these runs had other processes take more than 10 % of the machine "
              f"(others% up to {max(num(x.get('others%')) or 0 for x in busy):.0f}); read them with care.\n")
    if p["notes"]:
        print("Errors and notes reported by the runs:\n")
        for t in p["notes"]:
            print(f"- polymq: {t}")
        print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--human")
    ap.add_argument("--protocol", default="mqtt", choices=["mqtt", "amqp", "kafka", "cross"])
    ap.add_argument("--baselines", help="disk and loopback JSON lines (kafka)")
    ap.add_argument("--baseline-values", help="print the O_DIRECT, buffered and loopback MB/s of this file")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=FILE: another polymq configuration, shown beside polymq (amqp)")
    ap.add_argument("--polymq")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--peer-version", action="append", default=[])
    ap.add_argument("--commit", default="?")
    ap.add_argument("--seconds", default="?")
    ap.add_argument("--repeat", default="1")
    args = ap.parse_args()
    if args.baseline_values:
        print(" ".join("0" if v is None else f"{v:.0f}" for v in baseline_values(args.baseline_values)))
    elif args.human:
        human(args.human)
    elif args.polymq and args.protocol == "cross":
        compare_cross(args)
    elif args.polymq and args.protocol == "kafka":
        compare_kafka(args)
    elif args.polymq and args.protocol == "amqp":
        compare_amqp(args)
    elif args.polymq:
        compare(args)
    else:
        ap.error("--human FILE or --polymq FILE --peer NAME=FILE")


if __name__ == "__main__":
    sys.exit(main())
