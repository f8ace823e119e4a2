#!/usr/bin/env python3
"""tiercast benchmarks, each side by side with a baseline in the same run.

  (a) ladder:      tiercast's 3-rung ladder (720p passthrough, 480p and 360p encoded) vs one ffmpeg
                   process making the same ladder with the same x264 settings, both into HLS.
  (b) passthrough: tiercast RTMP -> HLS with no encode vs nginx-rtmp (`hls on`).
  (c) latency:     wall time from a frame entering RTMP to the segment holding it being listed in
                   the media playlist, for tiercast (passthrough and encoded rungs) and nginx-rtmp.

Every scenario publishes the same pre-encoded 720p30 H.264 + AAC file with `ffmpeg -re -c copy`,
so the publisher costs the same everywhere and is not counted. CPU is the server process's
utime + stime from /proc, read before the publish and after the last playlist is final, and
reported as CPU seconds per minute of source. Usage: bench/run.py [--seconds 60] [--out FILE]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
X264 = dict(preset="veryfast", tune="zerolatency")
RUNGS = [("720p", 720, 2800), ("480p", 480, 1400), ("360p", 360, 800)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tiercast_binary():
    """The release build, or $TIERCAST_BIN (to set two builds side by side)."""
    if os.environ.get("TIERCAST_BIN"):
        return os.environ["TIERCAST_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "release", "tiercast")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: cargo build --release -p tiercast")
    return path


def make_source(work, seconds):
    path = os.path.join(work, f"src720p-{seconds}s.flv")
    if not os.path.exists(path):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
             "-c:v", "libx264", "-preset", "veryfast", "-b:v", "3000k", "-g", "60", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "128k", "-ac", "2", path],
            check=True)
    return path


def publish(src, url):
    """ffmpeg pushing `src` in real time; returns (process, wall time it started)."""
    t0 = time.time()
    p = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-i", src, "-c", "copy", "-f", "flv", url])
    return p, t0


class PlaylistWatch(threading.Thread):
    """Polls a media playlist (HTTP URL or file) every 20 ms and notes when each segment appears."""

    def __init__(self, source):
        super().__init__(daemon=True)
        self.source, self.seen, self.stop, self.ended = source, {}, False, False
        self.interval = 0.02

    def read(self):
        try:
            if self.source.startswith("http"):
                with urllib.request.urlopen(self.source, timeout=2) as r:
                    return r.read().decode()
            with open(self.source) as f:
                return f.read()
        except Exception:
            return ""

    def run(self):
        while not self.stop:
            text = self.read()
            now = time.time()
            duration = None
            for line in text.splitlines():
                if line.startswith("#EXTINF:"):
                    duration = float(line[8:].split(",")[0])
                elif line and not line.startswith("#") and line not in self.seen:
                    self.seen[line] = (now, duration or 0.0)
            if "#EXT-X-ENDLIST" in text:
                self.ended = True
            time.sleep(self.interval)

    def latencies(self, t0):
        """Seconds from the last frame of each segment being sent (t0 + its media end time) to the
        segment being listed. Segments are ordered by name (sequence numbers)."""
        out, media_end = [], 0.0
        for name in sorted(self.seen, key=lambda n: [int(x) for x in re.findall(r"\d+", n)][-1:]):
            listed, duration = self.seen[name]
            media_end += duration
            out.append(listed - (t0 + media_end))
        return out[:-1]  # the last one is cut by the end of the stream


def summary(values):
    if not values:
        return None
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "p95": round(values[int(0.95 * (len(values) - 1))], 3)}


def run_tiercast(src, seconds, rungs, work, watch_rungs):
    data = tempfile.mkdtemp(dir=work)
    http, rtmp = free_port(), free_port()
    ladder = "".join(f'[[ladders.default]]\nname = "{n}"\nheight = {h}\nvideo_kbps = {k}\n' for n, h, k in rungs)
    config = os.path.join(data, "node.toml")
    with open(config, "w") as f:
        f.write(textwrap.dedent(f"""\
            [node]
            data_dir = "{data}/data"
            [http]
            listen = "127.0.0.1:{http}"
            [rtmp]
            listen = "127.0.0.1:{rtmp}"
            [transcode]
            x264_preset = "{X264['preset']}"
            x264_tune = "{X264['tune']}"
            [[streams]]
            name = "bench"
            key = "bench"
            """) + ladder)
    node = subprocess.Popen([tiercast_binary(), "run", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "log"), "w"))
    try:
        wait_port(rtmp)
        watches = {n: PlaylistWatch(f"http://127.0.0.1:{http}/hls/bench/{n}/index.m3u8") for n in watch_rungs}
        for w in watches.values():
            w.start()
        before = cpu_seconds(node.pid)
        pub, t0 = publish(src, f"rtmp://127.0.0.1:{rtmp}/live/bench")
        pub.wait()
        # The session is over once its state says so (polled once a second: negligible).
        deadline = time.time() + 30
        while time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/streams/bench", timeout=2) as r:
                if json.load(r)["state"] == "ended" and all(w.ended for w in watches.values()):
                    break
            time.sleep(1)
        time.sleep(1)
        cpu = cpu_seconds(node.pid) - before
        for w in watches.values():
            w.stop = True
        return cpu, {n: summary(w.latencies(t0)) for n, w in watches.items()}
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def run_ffmpeg_ladder(src, work, single_thread=False):
    out = tempfile.mkdtemp(dir=work)
    (n0, h0, k0), (n1, h1, k1), (n2, h2, k2) = RUNGS
    threads = ["-threads", "1"] if single_thread else []
    enc = lambda kbps: ["-c:v", "libx264"] + threads + ["-preset", X264["preset"], "-tune", X264["tune"], "-profile:v", "high",
                        "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps * 6 // 10}k",
                        "-x264-params", "scenecut=0:keyint=600", "-force_key_frames", "source", "-c:a", "copy"]
    hls = lambda name: ["-f", "hls", "-hls_time", "2", "-hls_list_size", "6", "-hls_flags", "delete_segments",
                        os.path.join(out, f"{name}.m3u8")]
    cmd = (["ffmpeg", "-v", "error", "-nostdin", "-re"] + threads + ["-i", src]
           + (["-filter_threads", "1", "-filter_complex_threads", "1"] if single_thread else [])
           + ["-filter_complex", f"[0:v]split=2[a][b];[a]scale=-2:{h1}[v1];[b]scale=-2:{h2}[v2]",
            "-map", "0:v", "-map", "0:a", "-c", "copy"] + hls(n0)
           + ["-map", "[v1]", "-map", "0:a"] + enc(k1) + hls(n1)
           + ["-map", "[v2]", "-map", "0:a"] + enc(k2) + hls(n2))
    p = subprocess.Popen(cmd)
    _, _, usage = os.wait4(p.pid, 0)
    shutil.rmtree(out, ignore_errors=True)
    return usage.ru_utime + usage.ru_stime


def run_nginx(src, work, measure_latency):
    root = tempfile.mkdtemp(dir=work)
    rtmp = free_port()
    hls = os.path.join(root, "hls")
    os.makedirs(hls)
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""\
            load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
            daemon off;
            master_process off;
            worker_processes 1;
            error_log {root}/error.log;
            pid {root}/nginx.pid;
            events {{ worker_connections 64; }}
            rtmp {{
              server {{
                listen 127.0.0.1:{rtmp};
                application live {{
                  live on;
                  hls on;
                  hls_path {hls};
                  hls_fragment 2s;
                  hls_playlist_length 12s;
                }}
              }}
            }}
            """))
    node = subprocess.Popen(["nginx", "-c", conf, "-p", root])
    try:
        wait_port(rtmp)
        watch = PlaylistWatch(os.path.join(hls, "bench.m3u8"))
        if measure_latency:
            watch.start()
        before = cpu_seconds(node.pid)
        pub, t0 = publish(src, f"rtmp://127.0.0.1:{rtmp}/live/bench")
        pub.wait()
        time.sleep(3)  # nginx-rtmp finishes its last fragment when the publisher leaves
        cpu = cpu_seconds(node.pid) - before
        watch.stop = True
        return cpu, summary(watch.latencies(t0)) if measure_latency else None
    finally:
        node.terminate()
        node.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def wait_port(port, limit=20):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "results.json"))
    ap.add_argument("--only", choices=["passthrough"],
                    help="run only the passthrough CPU scenario (b), every round")
    args = ap.parse_args()
    work = os.path.join(ROOT, "bench", "out")
    os.makedirs(work, exist_ok=True)
    src = make_source(work, args.seconds)
    per_min = 60.0 / args.seconds

    # CPU runs: nothing polls the servers while they work. Each round runs every contender once,
    # in turn, so a noisy neighbour hurts all of them alike; the median round is reported.
    runs = {"tc_ladder": [], "ff_ladder": [], "ff_ladder_1t": [], "tc_pass": [], "ng_pass": []}
    if args.only == "passthrough":
        for _ in range(args.rounds):
            runs["tc_pass"].append(run_tiercast(src, args.seconds, RUNGS[:1], work, [])[0])
            runs["ng_pass"].append(run_nginx(src, work, measure_latency=False)[0])
        tc_pass, ng_pass = statistics.median(runs["tc_pass"]), statistics.median(runs["ng_pass"])
        results = {
            "passthrough_cpu_s_per_min": {"tiercast": round(tc_pass * per_min, 3),
                                          "nginx_rtmp": round(ng_pass * per_min, 3),
                                          "ratio": round(tc_pass / ng_pass, 3) if ng_pass else None},
            "all_runs_cpu_s_per_min": {k: [round(x * per_min, 3) for x in runs[k]] for k in ("tc_pass", "ng_pass")},
        }
        print(json.dumps(results, indent=2))
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        return
    for _ in range(args.rounds):
        runs["tc_ladder"].append(run_tiercast(src, args.seconds, [("1080p", 1080, 5000)] + RUNGS, work, [])[0])
        runs["ff_ladder"].append(run_ffmpeg_ladder(src, work))
        runs["ff_ladder_1t"].append(run_ffmpeg_ladder(src, work, single_thread=True))
        runs["tc_pass"].append(run_tiercast(src, args.seconds, RUNGS[:1], work, [])[0])
        runs["ng_pass"].append(run_nginx(src, work, measure_latency=False)[0])
    median = {k: statistics.median(v) for k, v in runs.items()}
    tc_ladder, ff_ladder, ff_ladder_1t = median["tc_ladder"], median["ff_ladder"], median["ff_ladder_1t"]
    tc_pass, ng_pass = median["tc_pass"], median["ng_pass"]
    # Latency runs: playlists polled every 20 ms.
    lat_src = make_source(work, 30)
    _, tc_lat = run_tiercast(lat_src, 30, [("1080p", 1080, 5000)] + RUNGS, work, ["720p", "480p"])
    _, ng_lat = run_nginx(lat_src, work, measure_latency=True)

    results = {
        "source": f"{args.seconds} s of 1280x720 30 fps H.264 3 Mb/s + AAC 128 kb/s, published with ffmpeg -re -c copy",
        "x264": X264,
        "ladder_cpu_s_per_min": {"tiercast": round(tc_ladder * per_min, 2), "ffmpeg": round(ff_ladder * per_min, 2),
                                 "ratio": round(tc_ladder / ff_ladder, 3),
                                 "ffmpeg_one_thread_per_codec": round(ff_ladder_1t * per_min, 2),
                                 "ratio_vs_one_thread": round(tc_ladder / ff_ladder_1t, 3)},
        "passthrough_cpu_s_per_min": {"tiercast": round(tc_pass * per_min, 3), "nginx_rtmp": round(ng_pass * per_min, 3),
                                      "ratio": round(tc_pass / ng_pass, 3) if ng_pass else None},
        "frame_to_listed_s": {"tiercast_720p_passthrough": tc_lat["720p"], "tiercast_480p_encoded": tc_lat["480p"],
                              "nginx_rtmp": ng_lat},
    }
    results["all_runs_cpu_s_per_min"] = {k: [round(x * per_min, 2) for x in v] for k, v in runs.items()}
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
