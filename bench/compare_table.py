#!/usr/bin/env python3
"""Side-by-side markdown from polymq-bench JSON lines (bench/compare.sh calls this).

  compare_table.py --polymq P.jsonl --peer mosquitto=M.jsonl [--peer-version mosquitto=...] [--commit C]
  compare_table.py --human FILE.jsonl      # one broker's rows as plain aligned tables

Ratios are polymq / peer: above 1 means polymq does more (msg/s, conn/s) or
uses more (latency, memory, CPU); the column header says which way is better.
"""

import argparse
import json
import math
import sys


def load(path):
    out = {"machine": {}, "mqtt": [], "conns": [], "notes": [], "settings": {}}
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
    for name, rows in (("mqtt", data["mqtt"]), ("mqtt-conns", data["conns"])):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--human")
    ap.add_argument("--polymq")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--peer-version", action="append", default=[])
    ap.add_argument("--commit", default="?")
    ap.add_argument("--seconds", default="?")
    ap.add_argument("--repeat", default="1")
    args = ap.parse_args()
    if args.human:
        human(args.human)
    elif args.polymq:
        compare(args)
    else:
        ap.error("--human FILE or --polymq FILE --peer NAME=FILE")


if __name__ == "__main__":
    sys.exit(main())
