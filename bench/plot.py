#!/usr/bin/env python3
"""PNG plots from the JSON lines bench/compare.sh writes (matplotlib).

    plot.py DIR        # DIR = bench/results/<date>; the PNGs go into DIR

Draws what a table says less well, from whatever files DIR holds:

- sweep-throughput.png: MQTT QoS 1 fan-in, received msg/s against the number
  of publishers, one line per broker (compare-sweep-<broker>.jsonl, flat-out
  runs);
- sweep-latency.png: the same scenario paced, p50 / p99 / p99.9 end-to-end
  latency against the offered rate, one colour per broker (paced runs);
- cross.png: each cross-protocol path beside its same-protocol reference
  (compare-cross-polymq.jsonl): received msg/s flat out and p99 latency when
  paced.

Every figure names the date, the machine and the run length of its data,
since the numbers mean nothing without them. bench/compare.sh installs
matplotlib into .venv and runs this after the sweep and cross runs.
"""

import glob
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

COLOURS = {"polymq": "#1f77b4", "mosquitto": "#d62728", "rabbitmq": "#ff7f0e", "tansu": "#2ca02c"}


def rows(path):
    """(machine facts, result rows by table kind) of one JSON lines file; the
    settings blocks go under "<kind> settings"."""
    machine, out = {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            kind = obj.pop("kind", "")
            if kind == "machine":
                machine = obj
            elif kind.endswith(" settings"):
                machine.setdefault(kind, obj)
            elif ":" in kind:
                out.setdefault(kind.split(":", 1)[0], []).append(obj)
    return machine, out


def num(v):
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def median_by(points):
    """{x: [y...]} -> sorted [(x, median y)] (repeated runs of one point)."""
    out = []
    for x in sorted(points):
        ys = sorted(points[x])
        out.append((x, ys[(len(ys) - 1) // 2]))
    return out


def run_of(machine, settings):
    s = machine.get(settings, {})
    return f"{s.get('seconds', '?')} s, {s.get('size', '?')} B payloads".replace(" per run s", " s")


def caption(machine, extra):
    return (f"{machine.get('date', '?')}, {machine.get('nproc', '?')} vCPU, {extra}; "
            "broker and load generator share the machine")


def sweep(d):
    files = sorted(glob.glob(os.path.join(d, "compare-sweep-*.jsonl")))
    if not files:
        return []
    data, machine = {}, {}
    for f in files:
        name = os.path.basename(f)[len("compare-sweep-"):-len(".jsonl")]
        machine_f, r = rows(f)
        machine = machine or machine_f
        data[name] = [x for x in r.get("mqtt", []) if x.get("scenario") == "fan-in"]
    names = sorted(data, key=lambda n: (n != "polymq", n))
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        pts = {}
        for x in data[name]:
            if x.get("mode") == "max" and num(x.get("recv/s")) is not None:
                pts.setdefault(x.get("clients"), []).append(x["recv/s"])
        if pts:
            xs, ys = zip(*median_by(pts))
            ax.plot(xs, ys, marker="o", label=name, color=COLOURS.get(name))
    if ax.lines:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({int(x) for line in ax.lines for x in line.get_xdata()}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
        ax.set_xlabel("publishers (one topic each, one subscriber to +)")
        ax.set_ylabel("received msg/s")
        ax.set_title("MQTT QoS 1 fan-in, flat out: throughput vs. publishers")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.text(0.01, 0.01, caption(machine, run_of(machine, "mqtt settings")), fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        out = os.path.join(d, "sweep-throughput.png")
        fig.savefig(out, dpi=110)
        written.append(out)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = (("p50_ms", ":", "p50"), ("p99_ms", "-", "p99"), ("p99.9_ms", "--", "p99.9"))
    for name in names:
        for col, style, q in styles:
            pts = {}
            for x in data[name]:
                mode = str(x.get("mode", ""))
                if mode.startswith("rate=") and num(x.get(col)) is not None:
                    pts.setdefault(float(mode[5:]), []).append(x[col])
            if pts:
                xs, ys = zip(*median_by(pts))
                ax.plot(xs, ys, linestyle=style, marker="o", markersize=3, color=COLOURS.get(name), label=f"{name} {q}")
    if ax.lines:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted({float(x) for line in ax.lines for x in line.get_xdata()}))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.set_xlabel("offered rate, msg/s (all publishers together)")
        ax.set_ylabel("end-to-end latency, ms (scheduled send to delivery)")
        ax.set_title("MQTT QoS 1 fan-in, paced: latency vs. rate")
        # A point whose broker delivered under 95 % of the offered rate was overloaded: hollow marker.
        for name in names:
            for x in data[name]:
                mode = str(x.get("mode", ""))
                got, p99 = num(x.get("recv/s")), num(x.get("p99_ms"))
                if mode.startswith("rate=") and got is not None and p99 is not None and got < 0.95 * float(mode[5:]):
                    ax.plot([float(mode[5:])], [p99], marker="o", markersize=11, fillstyle="none", color=COLOURS.get(name))
        ax.plot([], [], marker="o", markersize=9, fillstyle="none", linestyle="none", color="gray",
                label="delivered < 95 % of the rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.text(0.01, 0.01, caption(machine, run_of(machine, "mqtt settings")), fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        out = os.path.join(d, "sweep-latency.png")
        fig.savefig(out, dpi=110)
        written.append(out)
    plt.close(fig)
    return written


def cross(d):
    f = os.path.join(d, "compare-cross-polymq.jsonl")
    if not os.path.exists(f):
        return []
    machine, r = rows(f)
    # (label, rows of that path)
    paths = [
        ("MQTT->MQTT", [x for x in r.get("mqtt", []) if x.get("scenario") == "fan-in"]),
        ("MQTT->Kafka", [x for x in r.get("cross", []) if x.get("scenario") == "mqtt-kafka"]),
        ("AMQP->AMQP", [x for x in r.get("amqp", []) if x.get("scenario") == "durable"]),
        ("AMQP->MQTT", [x for x in r.get("cross", []) if x.get("scenario") == "amqp-mqtt"]),
    ]
    paths = [(label, xs) for label, xs in paths if xs]
    if not paths:
        return []

    def med(xs, mode_max, col):
        vals = sorted(v for v in (num(x.get(col)) for x in xs if (x.get("mode") == "max") == mode_max) if v is not None)
        return vals[(len(vals) - 1) // 2] if vals else 0

    labels = [label for label, _ in paths]
    colours = ["#9ecae1" if "->" in lbl and lbl.split("->")[0] == lbl.split("->")[1] else "#1f77b4" for lbl in labels]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    a1.bar(labels, [med(xs, True, "recv/s") for _, xs in paths], color=colours)
    a1.set_title("flat out: received msg/s")
    a1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    rate = next((x.get("mode") for _, xs in paths for x in xs if x.get("mode") != "max"), None)
    a2.bar(labels, [med(xs, False, "p99_ms") for _, xs in paths], color=colours)
    a2.set_title(f"paced ({rate or 'no paced runs'}): p99 latency, ms")
    for a in (a1, a2):
        a.tick_params(axis="x", labelsize=8)
        a.grid(True, axis="y", alpha=0.3)
    fig.suptitle("polymq: crossing protocols (dark) beside the same protocol (light)")
    fig.text(0.01, 0.01, caption(machine, f"{run_of(machine, 'cross settings')}, QoS 1 / confirms"), fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    out = os.path.join(d, "cross.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.stderr.write(__doc__)
        return 2
    written = sweep(sys.argv[1]) + cross(sys.argv[1])
    for w in written:
        print(f"wrote {w}")
    if not written:
        print(f"nothing to plot in {sys.argv[1]} (no compare-sweep-*.jsonl or compare-cross-polymq.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
