#!/usr/bin/env python3
"""RTMP -> HLS passthrough CPU of two tiercast builds and nginx-rtmp, interleaved in one run.

Usage: ab_passthrough.py SECONDS ROUNDS, with /tmp/binb/release/tiercast (before) and
/tmp/binn/release/tiercast (after) in place (copies of two release builds)."""
import os, sys, json, statistics
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run
work = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
os.makedirs(work, exist_ok=True)
seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
src = run.make_source(work, seconds)
per_min = 60.0 / seconds
res = {"before": [], "after": [], "nginx": []}
for _ in range(rounds):
    for name, d in (("before", "/tmp/binb"), ("after", "/tmp/binn")):
        os.environ["CARGO_TARGET_DIR"] = d
        res[name].append(run.run_tiercast(src, seconds, run.RUNGS[:1], work, [])[0] * per_min)
    res["nginx"].append(run.run_nginx(src, work, measure_latency=False)[0] * per_min)
    print(json.dumps({k: [round(x, 3) for x in v] for k, v in res.items()}), flush=True)
print(json.dumps({k: round(statistics.median(v), 3) for k, v in res.items()}))
