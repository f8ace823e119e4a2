#!/usr/bin/env python3
"""Archiving benchmark: 10 minutes of 720p chunks remuxed into one MP4.

tiercast: the chunks are laid out in a chunk store as a recorded session leaves them and
`tiercast archiver --config --all` (no Kafka: it archives what the store holds, then exits) makes the
MP4. Baseline in the same run: `ffmpeg -f concat -c copy -movflags +faststart` on the same chunks.
Both times are wall-clock from start to a finished file, and both outputs are checked with
ffprobe. Usage: bench/archive.py [--minutes 10]
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def duration(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                         capture_output=True, text=True).stdout.strip()
    return float(out or 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=10)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    tiercast = os.path.join(target, "release", "tiercast")
    if not os.path.exists(tiercast):
        sys.exit(f"{tiercast} missing: cargo build --release -p tiercast")
    src = os.path.join(ROOT, "bench", "out", "src720p-60s.flv")
    if not os.path.exists(src):
        sys.exit(f"{src} missing: run bench/run.py once first")
    work = tempfile.mkdtemp(dir=os.path.join(ROOT, "bench", "out"))
    try:
        made = os.path.join(work, "made")
        os.makedirs(made)
        subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", str(args.minutes - 1), "-i", src, "-c", "copy",
                        "-f", "segment", "-segment_time", "2", os.path.join(made, "%05d.ts")], check=True)
        chunks = sorted(glob.glob(os.path.join(made, "*.ts")))
        session = os.path.join(work, "data", "chunks", "bench", "bench-1")
        os.makedirs(session)
        for i, c in enumerate(chunks):
            shutil.copy(c, os.path.join(session, f"{i:010d}.ts"))
        config = os.path.join(work, "node.toml")
        with open(config, "w") as f:
            f.write(f'[node]\ndata_dir = "{work}/data"\n[[streams]]\nname = "bench"\nkey = "bench"\nrecord = true\n')

        t = time.time()
        subprocess.run([tiercast, "archiver", "--config", config, "--all"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tc_time = time.time() - t
        tc_out = os.path.join(work, "data", "recordings", "bench", "bench-1.mp4")

        listing = os.path.join(work, "list.txt")
        with open(listing, "w") as f:
            f.writelines(f"file '{c}'\n" for c in chunks)
        ff_out = os.path.join(work, "ffmpeg.mp4")
        t = time.time()
        subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", listing, "-c", "copy",
                        "-movflags", "+faststart", ff_out], check=True)
        ff_time = time.time() - t

        result = {
            "chunks": len(chunks),
            "media_minutes": args.minutes,
            "tiercast_archiver_s": round(tc_time, 2),
            "ffmpeg_concat_copy_s": round(ff_time, 2),
            "ratio": round(tc_time / ff_time, 3),
            "tiercast_mp4_duration_s": round(duration(tc_out), 2),
            "ffmpeg_mp4_duration_s": round(duration(ff_out), 2),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
