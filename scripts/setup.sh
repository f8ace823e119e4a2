#!/usr/bin/env bash
# Installs what building and running tiercast needs on Debian 12 (only what is missing). Safe to
# run again. The tests' own tools (a Kafka-protocol broker, an S3-API server, Chromium, ffmpeg,
# schema validators) are set up by scripts/setup-tests.sh, which the test command runs.
set -euo pipefail

PACKAGES=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice
  cmake libssl-dev libcurl4-openssl-dev zlib1g-dev
)

# Installs the Debian packages named, those not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

apt_install "${PACKAGES[@]}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust 1.95 or newer (https://rustup.rs)" >&2
  exit 1
fi

# The watch page's HLS fallback (hls.js), pinned in web/package-lock.json.
if [ ! -f "$(dirname "$0")/../web/node_modules/hls.js/dist/hls.min.js" ]; then
  command -v npm >/dev/null 2>&1 || apt_install npm
  echo "setup: installing hls.js for the watch page"
  npm ci --prefix "$(dirname "$0")/../web" --no-audit --no-fund --silent
fi
