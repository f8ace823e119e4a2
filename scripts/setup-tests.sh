#!/usr/bin/env bash
# Installs what the tests need beyond running tiercast (scripts/setup.sh): real clients (ffmpeg,
# Chromium), a real Kafka-protocol broker (tansu, built once with cargo, ~12 minutes), a real
# S3-API server (moto) and the Kubernetes schemas. Only what is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

apt_install ffmpeg chromium curl python3 python3-pip socat openssl iproute2

# The tests run a real Kafka-protocol broker on loopback: tansu, built once (a few minutes),
# with its SQLite store (libsql), the one that keeps SASL/SCRAM users.
TANSU_FEATURES="dynostore,libsql"
if [ ! -x "$HOME/.cargo/bin/tansu" ] || [ "$(cat "$HOME/.cargo/.tansu-features" 2>/dev/null)" != "$TANSU_FEATURES" ]; then
  echo "setup: installing tansu (Kafka-protocol broker for the tests)"
  cargo install tansu --locked --force --features "$TANSU_FEATURES"
  echo "$TANSU_FEATURES" > "$HOME/.cargo/.tansu-features"
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

