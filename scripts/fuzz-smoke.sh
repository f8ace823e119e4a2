#!/usr/bin/env bash
# Builds the fuzz targets of rtc/ (every parser of bytes a WebRTC peer controls: SDP offers,
# RTP payloads, NACK lists) with cargo-fuzz and runs each for a few seconds from an empty
# corpus: a target that no longer builds, or a crash, fails the run. Longer runs and the
# other crates' targets: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../rtc"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz wants a nightly compiler's flags; a stable one takes them with this.
export RUSTC_BOOTSTRAP=1
# Its own target dir: sanitizer flags would otherwise rebuild the test build's crates.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tiercast-fuzz}"
seconds="${FUZZ_SECONDS:-10}"
cargo fuzz build
for target in $(cargo fuzz list); do
    corpus="$(mktemp -d)"
    echo "fuzz: $target for ${seconds}s"
    cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" 2>&1 | tail -n 3
    rm -rf "$corpus"
done
