#!/usr/bin/env python3
"""(f) WHEP viewers one core serves.

One all-in-one tiercast node (release build) pinned to core 0; ffmpeg publishes a 720p30
H.264 + AAC file at 2.5 Mb/s, passed through (the WHEP rendition is the source itself). The load
client (`relay-tiers/examples/whep_load.rs`) runs on core 1: str0m receivers in one process, each
on its own loopback UDP socket with a 1 MiB receive buffer and UDP GRO, each completing ICE and
DTLS. The first two decrypt and parse every packet (SRTP through str0m, which proves the
server's encryption); the rest read sequence numbers from the RTP header, which SRTP leaves in
the clear, so one core can receive for a thousand. All count packets and sequence gaps.

For each viewer count, over the second half of the window (every viewer joined): server CPU
(utime + stime from /proc) per second, core 0's busy share from /proc/stat (which also holds
kernel work done on the server's behalf), the client's CPU, packets lost at the receivers,
datagrams the kernel dropped for full receive buffers (any socket), datagrams per send system
call, and the server's resident memory growth per viewer (an upper bound: it also holds the
node's one-time growth). Last, `relay-tiers/examples/whep_memory.rs` measures the memory one
connected viewer session holds.

`--perf DIR` also records a CPU profile of the server per count (perf, cpu-clock, call graphs).
`WHEP_FULL=N` makes the first N receivers full ones.

`--baseline COUNTS` also runs the same load, in the same run, against GStreamer's own WHEP server
(`whepserversink` from gst-plugins-rs: webrtcsink, one webrtcbin per viewer, fed the same file's
H.264 as it is and its audio made into Opus once), pinned to core 0 like the node.

`--retry`: viewers the node turns away (`503`) ask again after the `Retry-After` it gives, while
enough of the run is left, so the count admitted is what admission finds the core can carry.
`--workers N`: the node runs N WebRTC workers on cores 0 to N-1 (the load client stays on core 1).

Usage: bench/whep.py [--counts 100,250,500,1000] [--seconds 15] [--baseline 50,100] [--perf DIR]
                     [--retry] [--workers N]
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def udp_receive_drops():
    """Datagrams the kernel dropped because a receiver's buffer was full (all sockets)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def core_busy(core):
    """Busy and total jiffies of one core (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v)
    return 0, 1


def metric(http, name):
    """One unlabelled figure from the node's /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return 0


def webrtc_viewers(http):
    return metric(http, "tiercast_webrtc_viewers")


def load_client():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(base.ROOT, "target"))
    path = os.path.join(target, "release", "examples", "whep_load")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: cargo build --release -p relay-tiers --example whep_load")
    return path


def make_source(work, seconds):
    path = os.path.join(work, f"src720p-2500k-{seconds}s.flv")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "2500k",
         "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2", path],
        check=True)
    return path


def measure(server_pid, url, n, args, http=None, env=None, tag="tiercast"):
    """Runs `n` load-client viewers of `url` for `args.seconds` and measures the server over the
    second half of the window (every viewer joined)."""
    rss0 = rss_kib(server_pid)
    client = subprocess.Popen(
        ["taskset", "-c", "1", load_client(), url, str(n), str(args.seconds)]
        + ([os.environ["WHEP_FULL"]] if "WHEP_FULL" in os.environ else []),
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {})))
    time.sleep(args.seconds / 2)
    cpu0, t0 = base.cpu_seconds(server_pid), time.time()
    client_cpu0 = base.cpu_seconds(client.pid)
    busy0, total0 = core_busy(0)
    drops0 = udp_receive_drops()
    packets0 = metric(http, "tiercast_webrtc_packets_sent_total") if http else 0
    calls0 = metric(http, "tiercast_webrtc_send_calls_total") if http else 0
    rss_full = rss_kib(server_pid)
    if args.perf:
        os.makedirs(args.perf, exist_ok=True)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(server_pid),
                        "-o", os.path.join(args.perf, f"whep-{tag}-{n}.data"), "--",
                        "sleep", str(args.seconds / 2 - 2)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(args.seconds / 2 - 1 - (time.time() - t0), 0))
    cpu = (base.cpu_seconds(server_pid) - cpu0) / (time.time() - t0)
    client_cpu = (base.cpu_seconds(client.pid) - client_cpu0) / (time.time() - t0)
    busy1, total1 = core_busy(0)
    drops = udp_receive_drops() - drops0
    out, _ = client.communicate(timeout=args.seconds + 60)
    figures = json.loads(out.strip().splitlines()[-1])
    figures.update({
        "server": tag,
        "server_core_share": round(cpu, 3),
        # Includes the kernel's loopback delivery (softirq) done on the server's core.
        "core0_busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "client_core_share": round(client_cpu, 3),
        "kernel_receive_drops": drops,
        "server_rss_kib_per_viewer": round((rss_full - rss0) / max(n, 1), 1),
        "loss_pct": round(100 * figures["lost"] / max(figures["packets"] + figures["lost"], 1), 3),
    })
    if http:
        packets = metric(http, "tiercast_webrtc_packets_sent_total") - packets0
        calls = metric(http, "tiercast_webrtc_send_calls_total") - calls0
        figures["datagrams_per_send_call"] = round(packets / max(calls, 1), 1)
    return figures


def baseline(src, counts, args, work):
    """The same load against GStreamer's own WHEP server (`whepserversink`: webrtcsink, one
    webrtcbin per viewer, fed the same file's H.264 as it is and Opus made once), on core 0."""
    helper = os.path.join(os.path.dirname(load_client()), "gst_webrtc")
    if not os.path.exists(helper):
        sys.exit(f"{helper} missing: cargo build --release -p tiercast --example gst_webrtc")
    port = base.free_port()
    server = subprocess.Popen(["taskset", "-c", "0", helper, "serve", src, str(port), "100000"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "baseline.log"), "w"))
    results = []
    try:
        base.wait_port(port)
        time.sleep(3)
        for n in counts:
            # libnice leaves loopback out of its candidates: receivers bind the machine's address.
            figures = measure(server.pid, f"http://127.0.0.1:{port}/whep/endpoint", n, args,
                              env={"WHEP_BIND": host_address()}, tag="gstreamer-whepserversink")
            print(json.dumps(figures), flush=True)
            results.append(figures)
            time.sleep(15)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


def host_address():
    """This machine's address on its default route."""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("198.51.100.1", 9))
        return s.getsockname()[0]
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="100,250,500,1000")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--baseline", metavar="COUNTS", default="",
                    help="also serve these viewer counts from GStreamer's whepserversink (same file, same load)")
    ap.add_argument("--retry", action="store_true",
                    help="viewers turned away (503) ask again after its Retry-After, as players do")
    ap.add_argument("--workers", type=int, default=1,
                    help="WebRTC workers of the node, pinned to as many cores (from core 0; the "
                         "load client stays on core 1)")
    ap.add_argument("--perf", metavar="DIR",
                    help="also record a CPU profile of the server (perf) per viewer count into DIR")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = tempfile.mkdtemp(prefix="tiercast-whep-bench-")
    try:
        runs = len(counts) + len([c for c in args.baseline.split(",") if c])
        src = make_source(work, (args.seconds + 20) * runs + 60)
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
                workers = {args.workers}
                max_viewers = 100000
                max_viewers_per_stream = 100000
                max_sessions_per_address = 100000
                offers_per_second_per_address = 100000
                [[streams]]
                name = "bench"
                key = "bench"
                [[ladders.default]]
                name = "720p"
                height = 720
                video_kbps = 2500
                """))
        cores = ",".join(str(c) for c in range(args.workers))
        node = subprocess.Popen(["taskset", "-c", cores, base.tiercast_binary(), "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
        base.wait_port(http)
        pub, _ = base.publish(src, f"rtmp://127.0.0.1:{rtmp}/live/bench")
        time.sleep(5)
        results = []
        try:
            for n in counts:
                figures = measure(node.pid, f"http://127.0.0.1:{http}/whep/bench", n, args, http=http,
                                  env={"WHEP_RETRY": "1"} if args.retry else None)
                print(json.dumps(figures), flush=True)
                results.append(figures)
                # The next count starts once the server has let every viewer of this one go
                # (ICE consent runs out a few seconds after the client is gone).
                deadline = time.time() + 60
                while webrtc_viewers(http) > 0 and time.time() < deadline:
                    time.sleep(1)
                time.sleep(2)
        finally:
            pub.send_signal(signal.SIGINT)
            node.send_signal(signal.SIGINT)
            node.wait(timeout=30)
        # Frames the fan-out skipped because it fell behind (no RTP gap shows them).
        with open(os.path.join(work, "log")) as f:
            behind = sum(1 for line in f if "frames behind" in line)
        print(json.dumps({"fan_out_fell_behind_warnings": behind}), flush=True)
        results.append({"fan_out_fell_behind_warnings": behind})
        memory = os.path.join(os.path.dirname(load_client()), "whep_memory")
        if os.path.exists(memory):
            out = subprocess.run([memory, "500"], capture_output=True, text=True, check=True).stdout
            session = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(session), flush=True)
            results.append(session)
        if args.baseline:
            results += baseline(src, [int(c) for c in args.baseline.split(",")], args, work)
        print(json.dumps({"whep": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
