#!/usr/bin/env python3
"""Churn: a node's memory across a thousand sessions that come and go.

One all-in-one tiercast node (release build). First `--loops` RTMP publishes of a 2 s 360p
H.264 + AAC file into stream `churn` (`ingest/examples/rtmp_churn.rs`: connect, handshake,
publish every tag as fast as the node takes it, disconnect; the node starts and ends a whole
session each time: ladder, HLS, events). Then `--loops` WebRTC viewers of stream `watch` (kept
live by ffmpeg), one after another (`relay-tiers/examples/whep_churn.rs`: offer, ICE, DTLS, the
first media packet, `DELETE`). The node's resident memory (VmRSS) is read at the start, half
way and at the end of each phase. What a leak would show: growth with the number of sessions.
Usage: bench/churn.py [--loops 1000]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402
from whep import rss_kib, webrtc_viewers  # noqa: E402


def example(name):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(base.ROOT, "target"))
    path = os.path.join(target, "release", "examples", name)
    if not os.path.exists(path):
        sys.exit(f"{path} missing: cargo build --release --examples -p ingest -p relay-tiers")
    return path


def phase(node, label, command, loops):
    """Runs `command` (which takes the loop count last) in two halves; RSS before, between, after."""
    rss = [rss_kib(node.pid)]
    runs = []
    for half in (loops // 2, loops - loops // 2):
        out = subprocess.run(command + [str(half)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        time.sleep(3)  # sessions let go, counters settle
        rss.append(rss_kib(node.pid))
    figures = {"phase": label, "loops": loops, "rss_mib": [round(r / 1024, 1) for r in rss],
               "growth_mib": round((rss[2] - rss[0]) / 1024, 1),
               "second_half_growth_mib": round((rss[2] - rss[1]) / 1024, 1), "runs": runs}
    print(json.dumps(figures), flush=True)
    return figures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", type=int, default=1000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tiercast-churn-")
    try:
        clip = os.path.join(work, "clip.flv")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "2",
             "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "96k", "-ac", "2", clip], check=True)
        http, rtmp = base.free_port(), base.free_port()
        config = os.path.join(work, "node.toml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [node]
                data_dir = "{work}/data"
                [http]
                listen = "127.0.0.1:{http}"
                [rtmp]
                listen = "127.0.0.1:{rtmp}"
                [webrtc]
                listen = "127.0.0.1:0"
                offers_per_second_per_address = 100000
                [[streams]]
                name = "churn"
                key = "churn-key-0123456789"
                [[streams]]
                name = "watch"
                key = "watch-key-0123456789"
                [[ladders.default]]
                name = "360p"
                height = 360
                video_kbps = 800
                """))
        node = subprocess.Popen([base.tiercast_binary(), "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
        try:
            base.wait_port(http)
            time.sleep(2)
            results = [phase(node, "rtmp publish", [example("rtmp_churn"), f"127.0.0.1:{rtmp}", "live",
                                                    "churn-key-0123456789", clip], args.loops)]
            watch = subprocess.Popen(
                ["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i", clip,
                 "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{rtmp}/live/watch-key-0123456789"])
            try:
                time.sleep(6)
                results.append(phase(node, "whep join-leave",
                                     [example("whep_churn"), f"http://127.0.0.1:{http}/whep/watch"],
                                     args.loops))
                results.append({"webrtc_viewers_after": webrtc_viewers(http)})
            finally:
                watch.send_signal(signal.SIGINT)
                watch.wait(timeout=10)
            print(json.dumps(results[-1]), flush=True)
        finally:
            node.send_signal(signal.SIGINT)
            node.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
