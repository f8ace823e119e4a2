#!/usr/bin/env python3
"""(h) The call server: forwarded video tracks per core, and how long a frame takes through it.

One tiercast node (release build) pinned to core 0 with `[calls]` and one user per
participant; the load client (`tiercast/examples/room_load.rs`) on core 1 joins rooms of
`size` participants over the signalling WebSocket, as the call page does. Each publishes a VP8
camera in three simulcast layers (160x90, 320x180, 640x360; synthetic frames of each layer's
typical size, keyframes every 2 s and on request) and takes every other participant's camera,
so a room of k forwards k(k-1) video tracks. Frames carry the time they were sent (one clock:
the client's process), so each received frame gives its delay through the server on loopback.

Over the second half of the window (everyone joined): the server's CPU (utime + stime from
/proc) per second, the tracks it forwards (`tiercast_calls_forwarded_tracks`) and the frames
(`tiercast_calls_frames_forwarded_total`); tracks per core = tracks / the server's core share.
Delays: p50 and p95 over every frame received in the run. The servers may send different
layers, so what the subscribers received (Mb/s, and per core) is shown beside tracks per core.

`--baseline` runs the same load, in the same run, against Janus 1.1.2's VideoRoom (Debian's
`janus`, started by `bench/janus_up.sh`, pinned the same way): one publisher and one
multistream subscriber connection per participant, every subscriber on the top layer.

Usage: bench/calls.py [--rooms 4:20,25:1] [--seconds 20] [--fps 30] [--baseline]
  (`size:rooms` pairs; build first: cargo build --release -p tiercast --bins --examples)
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123"


def metric(http, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def load_client():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(base.ROOT, "target"))
    path = os.path.join(target, "release", "examples", "room_load")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: cargo build --release -p tiercast --example room_load")
    return path


def node_config(work, http, rooms, size):
    users = "".join(
        f'[[calls.users]]\nid = "r{r}p{p}"\nname = "r{r}p{p}"\n'
        for r in range(rooms) for p in range(size))
    return textwrap.dedent(f"""\
        [node]
        data_dir = "{work}/data"
        [http]
        listen = "127.0.0.1:{http}"
        [rtmp]
        listen = "127.0.0.1:0"
        [webrtc]
        listen = "127.0.0.1:0"
        whip_listen = "127.0.0.1:0"
        [calls]
        secret = "{SECRET}"
        listen = "127.0.0.1:0"
        max_room_size = {max(size, 2)}
        """) + users


def tiercast(rooms, size, args, work):
    http = base.free_port()
    config = os.path.join(work, f"calls-{size}x{rooms}.toml")
    with open(config, "w") as f:
        f.write(node_config(work, http, rooms, size))
    log = open(os.path.join(work, f"node-{size}x{rooms}.log"), "w")
    node = subprocess.Popen(["taskset", "-c", "0", base.tiercast_binary(), "run", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        base.wait_port(http)
        return measure(node.pid, http, f"ws://127.0.0.1:{http}/ws", rooms, size, args, "tiercast")
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)


def janus(rooms, size, args, work):
    """The same load against Janus's VideoRoom (Debian's janus 1.1.2, bench/janus_up.sh)."""
    port = base.free_port()
    log = open(os.path.join(work, f"janus-{size}x{rooms}.log"), "w")
    server = subprocess.Popen(
        ["taskset", "-c", "0", os.path.join(base.ROOT, "bench", "janus_up.sh"),
         os.path.join(work, "janus"), str(port)], stdout=log, stderr=log)
    try:
        base.wait_port(port)
        return measure(server.pid, None, f"http://127.0.0.1:{port}/janus", rooms, size, args, "janus")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def measure(server_pid, http, url, rooms, size, args, tag):
    client = subprocess.Popen(
        ["taskset", "-c", "1", load_client(), tag, url, SECRET if tag == "tiercast" else "-",
         str(rooms), str(size),
         str(args.seconds), str(args.fps)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(args.seconds / 2)
    cpu0, t0 = base.cpu_seconds(server_pid), time.time()
    client0 = base.cpu_seconds(client.pid)
    frames0 = metric(http, "tiercast_calls_frames_forwarded_total") if http else 0
    time.sleep(args.seconds / 2 - 2)
    elapsed = time.time() - t0
    cpu = (base.cpu_seconds(server_pid) - cpu0) / elapsed
    client_cpu = (base.cpu_seconds(client.pid) - client0) / elapsed
    figures = {"server": tag, "room_size": size, "rooms": rooms}
    if http:
        figures["forwarded_tracks"] = metric(http, "tiercast_calls_forwarded_tracks")
        figures["frames_forwarded_per_s"] = round(
            (metric(http, "tiercast_calls_frames_forwarded_total") - frames0) / elapsed)
    out, _ = client.communicate(timeout=args.seconds + 120)
    figures.update(json.loads(out.strip().splitlines()[-1]))
    tracks = figures.get("forwarded_tracks") or figures["tracks"]
    # What the subscribers received, over the whole run: the servers may choose different
    # layers (Janus sends every subscriber the top one), so the cost per byte is shown too.
    mbps = figures["frames"] * figures["bytes_per_frame"] * 8 / args.seconds / 1e6
    figures.update({
        "server_core_share": round(cpu, 3),
        "client_core_share": round(client_cpu, 3),
        "tracks_per_core": round(tracks / max(cpu, 1e-3)),
        "received_mbps": round(mbps, 1),
        "mbps_per_core": round(mbps / max(cpu, 1e-3)),
    })
    return figures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", default="4:20,25:1")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--baseline", action="store_true",
                    help="also run the same load against Janus's VideoRoom (bench/janus_up.sh)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tiercast-calls-bench-")
    results = []
    for pair in args.rooms.split(","):
        size, rooms = (int(x) for x in pair.split(":"))
        for run in (tiercast, janus) if args.baseline else (tiercast,):
            figures = run(rooms, size, args, work)
            print(json.dumps(figures), flush=True)
            results.append(figures)
            time.sleep(3)
    os.makedirs(os.path.join(base.ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(base.ROOT, "bench", "out", "calls.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
