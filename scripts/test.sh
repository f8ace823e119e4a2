#!/usr/bin/env bash
# Runs every test: unit, integration (the real binary with ffmpeg publishers), and the RTMP
# fuzz corpus as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tests.sh
cargo test --workspace --locked "$@"
