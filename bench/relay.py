#!/usr/bin/env python3
"""Relay-tier benchmarks, on loopback, with release binaries.

  (d) hops:  an origin, a distribution node and an edge; ffmpeg publishes 720p30 (passed through)
             to the origin; three watchers poll the same media playlist on each tier every 10 ms
             and note when each segment (same name on every tier) is first listed. The delay
             between tiers is what each hop adds: p50 and p95 over the run.
  (e) edge:  HLS viewers one edge core serves, against nginx serving the same playlist and
             segment from disk, in the same run. The server is pinned to core 0, wrk to core 1;
             wrk (64 keep-alive connections) asks for the playlist and the newest segment in
             turn, as a viewer does once per segment. Viewers per core = pairs of requests per
             CPU-second of the server x segment duration.

Usage: bench/relay.py [--seconds 60]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

SECRET = "bench-cluster-secret-0123"


def node(work, name, role, extra, pin=None):
    http = base.free_port()
    rtmp = base.free_port()
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(textwrap.dedent(f"""\
            [node]
            role = "{role}"
            name = "{name}"
            data_dir = "{work}/{name}-data"
            [http]
            listen = "127.0.0.1:{http}"
            [rtmp]
            listen = "127.0.0.1:{rtmp}"
            """) + extra)
    cmd = [base.tiercast_binary(), "run", "--config", config]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin)] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name}.log"), "w"))
    base.wait_port(http)
    return p, http, rtmp


def cluster(ups):
    quoted = ", ".join(f'"127.0.0.1:{u}"' for u in ups)
    return f'[cluster]\nsecret = "{SECRET}"\n' + (f"upstreams = [{quoted}]\nlinger_seconds = 30\n" if ups else "")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def hops(src, seconds, work):
    origin, o_http, o_rtmp = node(work, "origin", "origin", cluster([]) + textwrap.dedent("""\
        [[streams]]
        name = "bench"
        key = "bench"
        [[ladders.default]]
        name = "720p"
        height = 720
        video_kbps = 3000
        """))
    dist, d_http, _ = node(work, "dist", "distribution", cluster([o_http]))
    edge, e_http, _ = node(work, "edge", "edge", cluster([d_http]))
    procs = [origin, dist, edge]
    try:
        watches = {}
        for tier, port in [("origin", o_http), ("distribution", d_http), ("edge", e_http)]:
            w = base.PlaylistWatch(f"http://127.0.0.1:{port}/hls/bench/720p/index.m3u8")
            w.interval = 0.01
            watches[tier] = w
            w.start()
        pub, _ = base.publish(src, f"rtmp://127.0.0.1:{o_rtmp}/live/bench")
        # (e) runs while the stream is live, on the same edge.
        time.sleep(min(20, seconds / 2))
        edge_figures = edge_capacity(work, e_http, edge.pid)
        pub.wait()
        time.sleep(3)
        for w in watches.values():
            w.stop = True
        first = {t: {n: at for n, (at, _) in w.seen.items()} for t, w in watches.items()}
        common = set(first["origin"]) & set(first["distribution"]) & set(first["edge"])
        d1 = [first["distribution"][n] - first["origin"][n] for n in common]
        d2 = [first["edge"][n] - first["distribution"][n] for n in common]
        return {
            "segments": len(common),
            "origin_to_distribution": base.summary(d1),
            "distribution_to_edge": base.summary(d2),
            "origin_to_edge": base.summary([a + b for a, b in zip(d1, d2)]),
        }, edge_figures
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=30)


WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  if n % 2 == 1 then return wrk.format("GET", "{playlist}") end
  return wrk.format("GET", "{segment}")
end
"""


def wrk(work, port, playlist, segment, pid_fn, seconds=10):
    script = os.path.join(work, f"pairs-{port}.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.format(playlist=playlist, segment=segment))
    before = sum(base.cpu_seconds(p) for p in pid_fn())
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    cpu = sum(base.cpu_seconds(p) for p in pid_fn()) - before
    requests = int([l for l in out.splitlines() if "requests in" in l][0].split()[0])
    errors = [l.strip() for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    if errors:
        sys.exit(f"wrk saw errors against port {port}: {errors}")
    return {"requests": requests, "cpu_s": round(cpu, 2), "errors": errors,
            "pairs_per_cpu_s": round(requests / 2 / max(cpu, 1e-3))}


def edge_capacity(work, e_http, edge_pid):
    playlist_path = "/hls/bench/720p/index.m3u8"
    text = get(f"http://127.0.0.1:{e_http}{playlist_path}").decode()
    lines = text.splitlines()
    segment_name = [l for l in lines if l.endswith(".ts")][-1]
    duration = float([l for l in lines if l.startswith("#EXTINF:")][-1][8:].split(",")[0])
    segment_path = f"/hls/bench/720p/{segment_name}"
    data = get(f"http://127.0.0.1:{e_http}{segment_path}")
    # Every thread of the edge on core 0; wrk gets core 1.
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(edge_pid)], capture_output=True, check=True)
    ours = wrk(work, e_http, playlist_path, segment_path, lambda: [edge_pid])

    root = tempfile.mkdtemp(dir=work)
    os.makedirs(os.path.join(root, "html/hls/bench/720p"))
    with open(os.path.join(root, "html" + playlist_path), "w") as f:
        f.write(text)
    with open(os.path.join(root, "html" + segment_path), "wb") as f:
        f.write(data)
    port = base.free_port()
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""\
            user root;
            worker_processes 1;
            daemon off;
            error_log {root}/error.log;
            pid {root}/nginx.pid;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 100000;
                types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
                server {{
                    listen 127.0.0.1:{port};
                    root {root}/html;
                }}
            }}
            """))
    nginx = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf, "-p", root])
    try:
        base.wait_port(port)
        children = lambda: [nginx.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()]
        theirs = wrk(work, port, playlist_path, segment_path, children)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)
    return {
        "segment_bytes": len(data),
        "segment_seconds": duration,
        "tiercast_edge": ours,
        "nginx_from_disk": theirs,
        "viewers_per_core": {
            "tiercast_edge": round(ours["pairs_per_cpu_s"] * duration),
            "nginx": round(theirs["pairs_per_cpu_s"] * duration),
        },
        "ratio": round(ours["pairs_per_cpu_s"] / max(theirs["pairs_per_cpu_s"], 1), 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset", "ffmpeg"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install wrk nginx util-linux ffmpeg)")
    work = tempfile.mkdtemp(prefix="tiercast-relay-bench-")
    try:
        src = base.make_source(work, args.seconds)
        hop, edge = hops(src, args.seconds, work)
        import json
        print(json.dumps({"hops": hop, "edge": edge}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
