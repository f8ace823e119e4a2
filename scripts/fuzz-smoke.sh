#!/usr/bin/env bash
# Builds every fuzz target with cargo-fuzz and runs each for a few seconds: rtc/'s (every
# parser of bytes a WebRTC peer controls: SDP offers, RTP payloads, NACK lists) and the
# workspace's in fuzz/ (RTMP connections, codec configs, WHEP offers, the relay wire, viewer
# tokens, cluster heartbeats, the TS muxer's inputs), each from its corpus when it has one. A target that no longer
# builds, or a crash, fails the run. Longer runs: fuzz/README.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz wants a nightly compiler's flags; a stable one takes them with this.
export RUSTC_BOOTSTRAP=1
# Its own target dir: sanitizer flags would otherwise rebuild the test build's crates.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tiercast-fuzz}"
seconds="${FUZZ_SECONDS:-10}"
for crate in "$root/rtc" "$root"; do
    cd "$crate"
    cargo fuzz build
    for target in $(cargo fuzz list); do
        corpus="$(mktemp -d)"
        if [ -d "fuzz/corpus/$target" ]; then
            cp -r "fuzz/corpus/$target/." "$corpus/"
        fi
        echo "fuzz: $target for ${seconds}s"
        cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" 2>&1 | tail -n 3
        rm -rf "$corpus"
    done
done
