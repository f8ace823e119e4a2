#!/usr/bin/env bash
# Runs every test: unit, integration (the real binary with ffmpeg publishers), the RTMP
# fuzz corpus as a regression test, then every fuzz target (rtc/fuzz and fuzz/) built and
# run briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tests.sh
cargo test --workspace --locked "$@"
scripts/fuzz-smoke.sh
