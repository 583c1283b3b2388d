import json, sys, statistics, collections
rows = collections.defaultdict(list)
for path in sys.argv[1:]:
    for line in open(path):
        try: r = json.loads(line)
        except Exception: continue
        if not r.get("kind", "").startswith("kafka: "): continue
        if not r.get("MB/s") or r.get("broker_cpu%") is None: continue
        key = (r["scenario"], r["size"], r["broker"])
        rows[key].append((10 * r["broker_cpu%"] / r["MB/s"], r["MB/s"], r["broker_cpu%"], r.get("others%"), r.get("msgs")))
print("| scenario | size | build | runs | broker CPU ms/MB median (min-max) | MB/s median (min-max) | broker CPU% median | others% median |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for key in sorted(rows, key=lambda k: (k[0] != "produce", -k[1], k[2] != "before")):
    v = rows[key]
    ms = [x[0] for x in v]; mb = [x[1] for x in v]; cpu = [x[2] for x in v]; oth = [x[3] for x in v if x[3] is not None]
    print(f"| {key[0]} | {key[1]:,} | {key[2]} | {len(v)} | {statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) | {statistics.median(mb):.0f} ({min(mb):.0f}-{max(mb):.0f}) | {statistics.median(cpu):.0f} | {statistics.median(oth) if oth else float('nan'):.0f} |")
