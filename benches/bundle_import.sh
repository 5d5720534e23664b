#!/usr/bin/env bash
# Benchmark `palisade bundle import` (release build) against this machine's limit: one core's
# SHA-256 speed as `openssl speed -evp sha256` measures it (16384-byte blocks), in the same run.
# Import must hash every byte once, so the ratio import MB/s / sha256 MB/s is the figure
# (target >= 0.90).
#
# Builds a bundle of BENCH_ARTIFACTS container images (OCI layouts made here, one layer each
# of incompressible random bytes, BENCH_TOTAL_MB in all), zstd-compressed (the default), then:
#   1. openssl speed -evp sha256 -seconds 3 (one process, one core);
#   2. dd of 1000 MB with conv=fdatasync: the disk's durable write speed, the other limit
#      (import writes every byte once and must fsync it before recording it);
#   3. palisade bundle verify (stream, decompress, hash; writes nothing);
#   4. palisade bundle import into a fresh data directory (stream, hash, stage with fsync,
#      rename into the registry, one transaction), BENCH_RUNS times, each on a new data dir;
# and prints a markdown table on stdout (progress on stderr). MB = 10^6 bytes. openssl speed
# divides by CPU time (its default); palisade's figures are given both per wall-clock second
# and per CPU-second (user + system, GNU time), and the load average is printed, because the
# machine may be shared.
#
# Usage: benches/bundle_import.sh
# Environment (all optional):
#   PALISADE_BIN      release binary; default: build with cargo into $CARGO_TARGET_DIR
#   CARGO_TARGET_DIR  default /work/bench-target-bundle when unset
#   BENCH_TOTAL_MB    content size (default 2000)
#   BENCH_ARTIFACTS   number of images the content is spread over (default 4)
#   BENCH_RUNS        imports measured (default 2; the best is reported, all are printed)
#   BENCH_DIR         work directory (default: a new one under /tmp); BENCH_KEEP=1 keeps it
#
# Requires: bash, coreutils, GNU time (/usr/bin/time), openssl, python3 (stdlib). Touches nothing outside its work dir.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TOTAL_MB="${BENCH_TOTAL_MB:-2000}"
ARTIFACTS="${BENCH_ARTIFACTS:-4}"
RUNS="${BENCH_RUNS:-2}"
TARGET_RATIO="0.90"

log() { echo "[bundle-bench] $*" >&2; }

if [[ -z "${PALISADE_BIN:-}" ]]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target-bundle}"
  log "building the release binary into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --locked --quiet)
  PALISADE_BIN="$CARGO_TARGET_DIR/release/palisade"
fi
BIN="$PALISADE_BIN"

WORK="${BENCH_DIR:-$(mktemp -d /tmp/palisade-bundle-bench.XXXXXX)}"
mkdir -p "$WORK"
cleanup() {
  if [[ "${BENCH_KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.0f}')" "$1" "$2"; }

# --- inputs: OCI image layouts with one random layer each --------------------------------
per_mb=$((TOTAL_MB / ARTIFACTS))
log "making $ARTIFACTS image layouts of $per_mb MB of random bytes each"
recipe="$WORK/recipe.toml"
printf '[bundle]\nname = "bench"\nversion = "1.0.0"\n' > "$recipe"
for i in $(seq 1 "$ARTIFACTS"); do
  dir="$WORK/layouts/img$i"
  mkdir -p "$dir/blobs/sha256"
  layer="$WORK/layer$i"
  openssl rand -out "$layer" $((per_mb * 1000000)) 2>/dev/null
  python3 - "$dir" "$layer" "$i" <<'PY'
import hashlib, json, os, shutil, sys
d, layer, i = sys.argv[1], sys.argv[2], sys.argv[3]
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(os.path.join(d, "blobs/sha256", h), "wb").write(b)
    return h
h = hashlib.sha256()
with open(layer, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
lh = h.hexdigest(); size = os.path.getsize(layer)
shutil.move(layer, os.path.join(d, "blobs/sha256", lh))
cfg = json.dumps({"architecture": "amd64", "os": "linux", "bench": i}).encode()
ch = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + ch, "size": len(cfg)},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + lh, "size": size}]}).encode()
mh = put(man)
open(os.path.join(d, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
  "digest": "sha256:" + mh, "size": len(man)}]}, open(os.path.join(d, "index.json"), "w"))
PY
  printf '[[layout]]\npath = "layouts/img%s"\nkind = "container-image"\nname = "bench/img%s"\nversion = "v1"\n' "$i" "$i" >> "$recipe"
done

"$BIN" bundle keygen -o "$WORK/key.pem" >/dev/null
log "building the bundle (zstd)"
t0=$(now)
"$BIN" bundle build "$recipe" --key "$WORK/key.pem" -o "$WORK/bench.bundle" 2>/dev/null >/dev/null
t1=$(now)
bundle_bytes=$(stat -c %s "$WORK/bench.bundle")
content_bytes=$("$BIN" bundle inspect --json "$WORK/bench.bundle" | python3 -c "import json,sys; print(json.load(sys.stdin)['content_bytes'])")
build_s=$(python3 -c "print($t1 - $t0)")
rm -rf "$WORK/layouts"   # the bundle is all that is read from now on

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the limit: one core's sha256 -----------------------------------------------------------
log "openssl speed -evp sha256 (3 s per block size)"
speed_line=$(openssl speed -seconds 3 -evp sha256 2>/dev/null | grep -E '^(sha256|SHA256)' | tail -1)
# Columns: 16, 64, 256, 1024, 8192, 16384 bytes; values in 1000s of bytes per second ("k").
sha_mbps=$(echo "$speed_line" | awk '{v=$NF; sub(/k$/, "", v); printf "%.0f", v / 1000}')

# --- the other limit: durable writes to the disk holding the data directory -----------------
log "dd 1000 MB with fdatasync (the disk's durable write speed)"
t0=$(now)
dd if=/dev/zero of="$WORK/ddtest" bs=1M count=1000 conv=fdatasync 2>/dev/null
t1=$(now)
rm -f "$WORK/ddtest"
disk_mbps=$(mbps 1048576000 "$(python3 -c "print($t1 - $t0)")")

# --- verify (no writes) --------------------------------------------------------------------
cat "$WORK/bench.bundle" > /dev/null   # the bundle in the page cache, as for every run below
log "palisade bundle verify"
read -r verify_s verify_u verify_k < <(/usr/bin/time -f "%e %U %S" -o /dev/stdout \
  "$BIN" bundle verify --trusted-key "$WORK/key.pem.pub" "$WORK/bench.bundle" 2>/dev/null | tail -1)
verify_mbps=$(mbps "$content_bytes" "$verify_s")
verify_cpu_mbps=$(mbps "$content_bytes" "$(python3 -c "print($verify_u + $verify_k)")")

# --- import ---------------------------------------------------------------------------------
best_s=""
all=""
for r in $(seq 1 "$RUNS"); do
  data="$WORK/data$r"
  printf 'bench-password-123456\n' | "$BIN" admin create-user admin --data-dir "$data" --password-stdin >/dev/null
  "$BIN" bundle trust add "$WORK/key.pem.pub" --data-dir "$data" >/dev/null
  sync
  log "palisade bundle import, run $r of $RUNS"
  read -r s u k < <(/usr/bin/time -f "%e %U %S" -o /dev/stdout \
    "$BIN" bundle import "$WORK/bench.bundle" --data-dir "$data" 2>/dev/null | tail -1)
  all="$all $(mbps "$content_bytes" "$s")"
  if [[ -z "$best_s" ]] || python3 -c "import sys; sys.exit(0 if $s < $best_s else 1)"; then
    best_s=$s; best_cpu=$(python3 -c "print($u + $k)")
  fi
  rm -rf "$data"
done
import_mbps=$(mbps "$content_bytes" "$best_s")
import_cpu_mbps=$(mbps "$content_bytes" "$best_cpu")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
ratio=$(python3 -c "print(f'{$import_mbps / $sha_mbps:.2f}')")
verify_ratio=$(python3 -c "print(f'{$verify_mbps / $sha_mbps:.2f}')")
limit_mbps=$(python3 -c "print(min($sha_mbps, $disk_mbps))")
limit_ratio=$(python3 -c "print(f'{$import_mbps / $limit_mbps:.2f}')")
verdict=$(python3 -c "print('meets' if $import_mbps / $sha_mbps >= $TARGET_RATIO else 'misses')")

cat <<EOF
| figure | value |
|---|---|
| content | $(python3 -c "print(f'{$content_bytes/1e6:.0f}')") MB in $ARTIFACTS images, incompressible |
| bundle file (zstd) | $(python3 -c "print(f'{$bundle_bytes/1e6:.0f}')") MB, built in $(python3 -c "print(f'{$build_s:.1f}')") s |
| openssl speed -evp sha256, 16384-byte blocks, one core | $sha_mbps MB/s |
| dd 1000 MB, conv=fdatasync, to the data directory's disk | $disk_mbps MB/s |
| palisade bundle verify (decompress + hash, no writes) | $verify_mbps MB/s wall clock (/ sha256: $verify_ratio); $verify_cpu_mbps MB per CPU-second |
| palisade bundle import (best of $RUNS:$all MB/s) | $import_mbps MB/s wall clock; $import_cpu_mbps MB per CPU-second |
| import / sha256 | **$ratio** (target ≥ $TARGET_RATIO: $verdict) |
| import / min(sha256, disk) | $limit_ratio |
| load average (1, 5, 15 min) at start / end | $load_start / $load_end on $(nproc) cores |
EOF
