#!/usr/bin/env bash
# Palisade's broker against NATS JetStream (Debian's nats-server) in the same run: builds the
# release executable and the comparison bench, then runs it. Figures go to docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || {
  echo "nats-server is missing: apt-get install nats-server" >&2
  exit 1
}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin palisade
export PALISADE_BIN="$CARGO_TARGET_DIR/release/palisade"
cargo bench --locked --bench broker_compare
