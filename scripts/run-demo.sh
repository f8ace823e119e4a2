#!/usr/bin/env bash
# Sets everything up, builds tiercast and runs the built-in all-in-one node with a synthetic
# camera publishing into the `demo` stream. Watch: http://localhost:8080/hls/demo/master.m3u8
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p tiercast
exec "${CARGO_TARGET_DIR:-target}/release/tiercast" run --demo-source "$@"
