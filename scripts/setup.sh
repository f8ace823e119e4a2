#!/usr/bin/env bash
# Installs what tiercast needs on Debian 12 (only what is missing). Safe to run again.
set -euo pipefail

PACKAGES=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice
  ffmpeg
  cmake libssl-dev libcurl4-openssl-dev zlib1g-dev
  curl python3 python3-pip
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust 1.95 or newer (https://rustup.rs)" >&2
  exit 1
fi

# The tests run a real Kafka-protocol broker on loopback: tansu, built once (a few minutes).
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "setup: installing tansu (Kafka-protocol broker for the tests)"
  cargo install tansu --locked --features dynostore
fi

# ... and a real S3-API server: moto's, from PyPI (5.2.5 or newer: older ones answer
# CompleteMultipartUpload with a root element the AWS SDKs reject).
MOTO='moto[server]>=5.2.5'
if ! python3 -c "import boto3, flask, moto.server, sys; sys.exit(tuple(map(int, moto.__version__.split('.')[:3])) < (5, 2, 5))" >/dev/null 2>&1; then
  echo "setup: installing moto (S3-API server for the tests)"
  python3 -m pip install --quiet "$MOTO" || python3 -m pip install --quiet --break-system-packages "$MOTO"
fi

# ... and the Kubernetes API schemas, to check deploy/k8s offline.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate"
  python3 -m pip install --quiet kubernetes-validate \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi

# The watch page's HLS fallback (hls.js), pinned in web/package-lock.json.
if [ ! -f "$(dirname "$0")/../web/node_modules/hls.js/dist/hls.min.js" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
  fi
  echo "setup: installing hls.js for the watch page"
  npm ci --prefix "$(dirname "$0")/../web" --no-audit --no-fund --silent
fi
