#!/usr/bin/env bash
# Runs a 1-origin / 2-distribution / 2-region-edge tiercast cluster as processes on this
# machine, with a synthetic camera publishing to the origin. Ctrl-C stops them all.
#
#   origin          rtmp://127.0.0.1:1935/live/local   http://127.0.0.1:8080
#   distribution-1  http://127.0.0.1:8081              distribution-2  http://127.0.0.1:8082
#   edge-eu-west    http://127.0.0.1:8083              edge-us-east    http://127.0.0.1:8084
set -euo pipefail
cd "$(dirname "$0")"
here="$PWD"
root="$(cd ../.. && pwd)"
"$root/scripts/setup.sh"
(cd "$root" && cargo build --release --locked -p tiercast)
bin="${CARGO_TARGET_DIR:-$root/target}/release/tiercast"
mkdir -p tiercast-local
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
start() {
  local name="$1"; shift
  "$bin" run --config "$here/$name.toml" "$@" >"tiercast-local/$name.out" 2>"tiercast-local/$name.log" &
  pids+=($!)
}
start origin --demo-source
start distribution-1
start distribution-2
start edge-eu-west
start edge-us-east
sleep 3
cat <<MSG
cluster up (logs in $here/tiercast-local/):
  watch in eu-west  http://127.0.0.1:8083/hls/main/master.m3u8   (ffplay, VLC, Safari)
  watch in us-east  http://127.0.0.1:8084/hls/main/master.m3u8
  any node routes:  curl -si 'http://127.0.0.1:8080/hls/main/master.m3u8?region=us-east' | grep -i location
                    curl -s  'http://127.0.0.1:8080/api/v1/route?stream=main&region=eu-west'
  cluster view:     curl -s  http://127.0.0.1:8080/api/v1/cluster
  publish your own: ffmpeg -re -i input.mp4 -c copy -f flv rtmp://127.0.0.1:1935/live/local
Ctrl-C stops everything.
MSG
wait
