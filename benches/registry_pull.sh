#!/usr/bin/env bash
# Blob pull throughput: skopeo pulling the same image from the appliance's registry
# (`palisade serve`, HTTPS, Basic auth with an API token) and from Debian's docker-registry
# (the CNCF distribution registry, plain HTTP, no auth, filesystem storage), in the same run.
#
# What it does, all on 127.0.0.1:
#   1. builds an OCI image layout of $BENCH_LAYERS layers of $BENCH_LAYER_MB MiB each of
#      incompressible bytes (/dev/urandom, one file per layer, each layer an uncompressed tar);
#   2. starts a release `palisade serve` on a fresh data directory, completes setup with the
#      setup token and mints an API token; starts `/usr/bin/docker-registry serve config.yml`;
#   3. pushes the image into both with `skopeo copy --preserve-digests` (same digests in both);
#   4. alternating between the two (palisade first), $BENCH_RUNS pulls from each with
#      `skopeo copy docker://... dir:<fresh dir>` into the work directory (same disk for both),
#      each timed with `date +%s.%N`; the destination is deleted and `sync` run between pulls
#      (no caches are dropped: both registries serve from the page cache);
#   5. as a diagnostic without the client's disk writes, $BENCH_RUNS alternating `curl` downloads
#      of every layer to /dev/null from each (one connection, layers one after another);
#   6. prints a markdown table: MB/s per run (MB = 10^6 bytes of blob content), medians, the
#      ratio palisade / docker-registry, the servers' CPU time per pull, nproc and load average.
#
# Usage: benches/registry_pull.sh            (from anywhere; results on stdout, progress on stderr)
# Environment (all optional):
#   PALISADE_BIN      binary to test; default target/release/palisade, built with
#                     `cargo build --release --locked --bin palisade` if missing or older than
#                     the sources (CARGO_TARGET_DIR is honoured)
#   BENCH_LAYERS      number of layers (default 4)
#   BENCH_LAYER_MB    MiB per layer (default 256)
#   BENCH_RUNS        pulls per registry (default 3)
#   BENCH_KEEP=1      keep the work directory (it is also kept when the script fails)
#   TMPDIR            where the work directory is made (default /tmp); it holds about 4x the image
#
# Requires: skopeo, /usr/bin/docker-registry (Debian package docker-registry), curl, python3,
# openssl (docker-registry's certificate).

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

LAYERS="${BENCH_LAYERS:-4}"
LAYER_MB="${BENCH_LAYER_MB:-256}"
RUNS="${BENCH_RUNS:-3}"
REPO="shared/bench"
TAG="v1"

log() { printf '[registry_pull.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in skopeo curl python3 sha256sum tar; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x /usr/bin/docker-registry ]] || die "/usr/bin/docker-registry is required (Debian package docker-registry)"

# ---------------------------------------------------------------------------------------------
# Work directory; both servers are stopped on any exit.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/palisade-pull-bench.XXXXXX")"
PAL_PID=""
REG_PID=""

stop_pid() {
    local pid="$1" n
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((n = 0; n < 100; n++)); do # at most 10 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$PAL_PID"
    stop_pid "$REG_PID"
    if [[ "${BENCH_KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        log "kept work directory $WORK (exit status $rc)"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# skopeo with its own HOME (no auth file of the user's) and an accept-anything policy.
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$WORK/policy.json"
skopeo_() { HOME="$WORK" skopeo --policy "$WORK/policy.json" "$@"; }

NPROC="$(nproc)"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "nproc $NPROC; load average at start: $LOAD_START; work directory $WORK"

# ---------------------------------------------------------------------------------------------
# Binary: the release build, rebuilt if missing or older than the sources.
if [[ -n "${PALISADE_BIN:-}" ]]; then
    BIN="$(readlink -f "$PALISADE_BIN")"
else
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/palisade"
    SOURCES=("$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock")
    [[ -e "$ROOT/build.rs" ]] && SOURCES+=("$ROOT/build.rs")
    if [[ ! -x "$BIN" ]] || [[ -n "$(find "${SOURCES[@]}" -newer "$BIN" -print -quit)" ]]; then
        log "building the release binary (missing or older than the sources)"
        (cd "$ROOT" && cargo build --release --locked --bin palisade) >&2
    fi
    BIN="$(readlink -f "$BIN")"
fi
[[ -x "$BIN" ]] || die "no executable at $BIN"
log "binary: $BIN ($(stat -c %s "$BIN") bytes, built $(date -u -r "$BIN" +%FT%TZ))"

# ---------------------------------------------------------------------------------------------
# 1. The image: an OCI layout of uncompressed tar layers of random bytes.
LAYOUT="$WORK/layout"
log "writing $LAYERS layers of $LAYER_MB MiB of /dev/urandom into an OCI layout"
mkdir -p "$LAYOUT/blobs/sha256" "$WORK/gen"
LAYER_DIGESTS=()
LAYER_SIZES=()
for ((i = 1; i <= LAYERS; i++)); do
    head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom >"$WORK/gen/random-$i.bin"
    tar -C "$WORK/gen" --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -cf "$WORK/gen/layer.tar" "random-$i.bin"
    rm "$WORK/gen/random-$i.bin"
    hex="$(sha256sum "$WORK/gen/layer.tar" | cut -d' ' -f1)"
    LAYER_DIGESTS+=("sha256:$hex")
    LAYER_SIZES+=("$(stat -c %s "$WORK/gen/layer.tar")")
    mv "$WORK/gen/layer.tar" "$LAYOUT/blobs/sha256/$hex"
done
rmdir "$WORK/gen"
# Config, manifest and index.json (the layers are uncompressed, so diff_id = layer digest).
python3 - "$LAYOUT" "$TAG" "${LAYER_DIGESTS[*]}" "${LAYER_SIZES[*]}" <<'PY'
import hashlib, json, os, sys
layout, tag, digests, sizes = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
def put(data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {},
    "rootfs": {"type": "layers", "diff_ids": digests},
}, separators=(",", ":")).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": int(s)}
               for d, s in zip(digests, sizes)],
}, separators=(",", ":")).encode()
m = put(manifest)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
# Bytes a pull moves: every layer plus the config (the manifest is not counted).
CONFIG_SIZE="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["size"])' \
    "$LAYOUT/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"][7:])' "$LAYOUT/index.json")")"
TOTAL_BYTES="$CONFIG_SIZE"
for s in "${LAYER_SIZES[@]}"; do TOTAL_BYTES=$((TOTAL_BYTES + s)); done
log "image: $LAYERS layers, $TOTAL_BYTES bytes of blobs (layers + config)"

# ---------------------------------------------------------------------------------------------
# 2. The appliance: release `palisade serve` on a fresh data directory, then setup and a token.
PAL_DIR="$WORK/palisade-data"
PAL_PORT="$(free_port)"
"$BIN" serve --data-dir "$PAL_DIR" --listen "127.0.0.1:$PAL_PORT" --broker-listen 127.0.0.1:0 \
    >"$WORK/palisade.out" 2>"$WORK/palisade.log" </dev/null &
PAL_PID=$!
for ((n = 0; n < 600; n++)); do # at most 30 s
    grep -q '^  Data directory:' "$WORK/palisade.out" 2>/dev/null && break
    kill -0 "$PAL_PID" 2>/dev/null || die "palisade exited early; see $WORK/palisade.log"
    sleep 0.05
done
grep -q '^  Data directory:' "$WORK/palisade.out" || die "palisade printed no banner within 30 s"
SETUP_TOKEN="$(sed -n 's/^  Setup token: *//p' "$WORK/palisade.out")"
[[ -n "$SETUP_TOKEN" ]] || die "a fresh data directory printed no setup token"
CERTS="$WORK/certs" # skopeo's --*-cert-dir: the appliance's CA as ca.crt
mkdir -p "$CERTS"
cp "$PAL_DIR/pki/ca.crt" "$CERTS/ca.crt"
for ((n = 0; n < 200; n++)); do # at most ~10 s
    curl -sf --max-time 1 --cacert "$CERTS/ca.crt" "https://127.0.0.1:$PAL_PORT/readyz" >/dev/null && break
    sleep 0.05
done
curl -sf --max-time 1 --cacert "$CERTS/ca.crt" "https://127.0.0.1:$PAL_PORT/readyz" >/dev/null ||
    die "palisade not ready within 10 s"
# Setup (admin user), login (cookie + CSRF token), then an API token for Basic auth.
TOKEN="$(python3 - "$PAL_PORT" "$CERTS/ca.crt" "$SETUP_TOKEN" <<'PY'
import http.client, json, ssl, sys
port, ca, setup_token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca), timeout=30)
def call(method, path, body, headers={}):
    conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    r = conn.getresponse()
    raw = r.read()
    if r.status not in (200, 201):
        sys.exit(f"{method} {path} -> {r.status}: {raw[:300]!r}")
    return r, json.loads(raw) if raw else None
password = "bench-password-0123456789"
call("POST", "/v1/setup", {"token": setup_token, "username": "admin", "password": password})
r, body = call("POST", "/v1/login", {"username": "admin", "password": password})
cookie = r.getheader("Set-Cookie").split(";", 1)[0]
_, tok = call("POST", "/v1/tokens", {"name": "pull-bench"}, {"Cookie": cookie, "X-CSRF-Token": body["csrf_token"]})
print(tok["secret"])
PY
)"
[[ -n "$TOKEN" ]] || die "no API token"
PAL="127.0.0.1:$PAL_PORT"
log "palisade serve on https://$PAL (pid $PAL_PID)"

# docker-registry: no auth, filesystem storage in the work directory; HTTPS like the appliance
# (a throwaway self-signed certificate) unless REGISTRY_TLS=0, so both pay for TLS.
REG_PORT="$(free_port)"
REG="127.0.0.1:$REG_PORT"
REG_TLS="${REGISTRY_TLS:-1}"
REG_CERTS="$WORK/registry-certs" # skopeo's --*-cert-dir for docker-registry
TLS_YAML=""
REG_SCHEME=http
if [[ "$REG_TLS" == 1 ]]; then
    mkdir -p "$REG_CERTS"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/registry.key" -out "$REG_CERTS/ca.crt" 2>/dev/null
    TLS_YAML="  tls:
    certificate: $REG_CERTS/ca.crt
    key: $WORK/registry.key"
    REG_SCHEME=https
fi
cat >"$WORK/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
http:
  addr: $REG
  secret: bench-only-secret
$TLS_YAML
EOF
reg_tls_args() { # skopeo flags for docker-registry as source (src) or destination (dest)
    if [[ "$REG_TLS" == 1 ]]; then echo "--$1-cert-dir $REG_CERTS"; else echo "--$1-tls-verify=false"; fi
}
reg_curl() { if [[ "$REG_TLS" == 1 ]]; then echo "--cacert $REG_CERTS/ca.crt"; fi; }
/usr/bin/docker-registry serve "$WORK/config.yml" >/dev/null 2>"$WORK/docker-registry.log" </dev/null &
REG_PID=$!
for ((n = 0; n < 200; n++)); do # at most ~10 s
    curl -sf --max-time 1 $(reg_curl) "$REG_SCHEME://$REG/v2/" >/dev/null && break
    kill -0 "$REG_PID" 2>/dev/null || die "docker-registry exited early; see $WORK/docker-registry.log"
    sleep 0.05
done
curl -sf --max-time 1 $(reg_curl) "$REG_SCHEME://$REG/v2/" >/dev/null || die "docker-registry not ready within 10 s"
log "docker-registry $(/usr/bin/docker-registry --version | awk '{print $NF}') on $REG_SCHEME://$REG (pid $REG_PID)"

# ---------------------------------------------------------------------------------------------
# 3. Push the same image (same digests) into both.
log "pushing into palisade"
skopeo_ copy -q --preserve-digests --dest-creds "admin:$TOKEN" --dest-cert-dir "$CERTS" \
    "oci:$LAYOUT:$TAG" "docker://$PAL/$REPO:$TAG" >&2
log "pushing into docker-registry"
# shellcheck disable=SC2046 # the flags are meant to split
skopeo_ copy -q --preserve-digests $(reg_tls_args dest) \
    "oci:$LAYOUT:$TAG" "docker://$REG/$REPO:$TAG" >&2
rm -rf "$LAYOUT" # not needed any more; frees the disk for the pulls
sync

# ---------------------------------------------------------------------------------------------
# 4. and 5. Timed pulls.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
now() { date +%s.%N; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
sub_() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# pull_skopeo NAME -> sets SECS, CPU (server CPU seconds during the pull)
pull_skopeo() {
    local name="$1" dest="$WORK/pulled" t0 t1 c0 c1 pid src files bytes
    local args=(copy -q)
    if [[ "$name" == palisade ]]; then
        args+=(--src-creds "admin:$TOKEN" --src-cert-dir "$CERTS")
        src="docker://$PAL/$REPO:$TAG" pid="$PAL_PID"
    else
        # shellcheck disable=SC2207 # the flags are meant to split
        args+=($(reg_tls_args src))
        src="docker://$REG/$REPO:$TAG" pid="$REG_PID"
    fi
    rm -rf "$dest"
    sync
    c0="$(cpu_s "$pid")"
    t0="$(now)"
    skopeo_ "${args[@]}" "$src" "dir:$dest" >&2
    t1="$(now)"
    c1="$(cpu_s "$pid")"
    # skopeo verified every digest; check that every blob arrived whole.
    files="$(find "$dest" -type f -size +1k | wc -l)"
    bytes="$(find "$dest" -type f ! -name manifest.json ! -name version -printf '%s\n' | awk '{s += $1} END {print s}')"
    [[ "$files" -ge "$LAYERS" && "$bytes" == "$TOTAL_BYTES" ]] ||
        die "pull from $name left $files files / $bytes bytes, expected $TOTAL_BYTES"
    rm -rf "$dest"
    sync
    SECS="$(sub_ "$t0" "$t1")"
    CPU="$(sub_ "$c0" "$c1")"
}

# pull_curl NAME -> sets SECS: every layer, one connection, to /dev/null
pull_curl() {
    local name="$1" t0 t1 got urls=() d
    local args=(-sf --max-time 300 -w '%{size_download}\n')
    for d in "${LAYER_DIGESTS[@]}"; do
        if [[ "$name" == palisade ]]; then
            urls+=("https://$PAL/v2/$REPO/blobs/$d")
        else
            urls+=("$REG_SCHEME://$REG/v2/$REPO/blobs/$d")
        fi
    done
    if [[ "$name" == palisade ]]; then
        args+=(--cacert "$CERTS/ca.crt" -u "admin:$TOKEN")
    elif [[ "$REG_TLS" == 1 ]]; then
        args+=(--cacert "$REG_CERTS/ca.crt")
    fi
    # One -o per URL.
    local outs=()
    for d in "${urls[@]}"; do outs+=(-o /dev/null); done
    t0="$(now)"
    got="$(curl "${args[@]}" "${outs[@]}" "${urls[@]}" | awk '{s += $1} END {print s}')"
    t1="$(now)"
    [[ "$got" == "$((TOTAL_BYTES - CONFIG_SIZE))" ]] || die "curl from $name got $got bytes"
    SECS="$(sub_ "$t0" "$t1")"
}

declare -A S_SECS S_CPU C_SECS
for ((r = 1; r <= RUNS; r++)); do
    for name in palisade docker-registry; do
        pull_skopeo "$name"
        S_SECS[$name,$r]="$SECS" S_CPU[$name,$r]="$CPU"
        log "skopeo pull $r from $name: $SECS s, $(mbps "$TOTAL_BYTES" "$SECS") MB/s, server CPU $CPU s"
    done
done
LAYER_BYTES=$((TOTAL_BYTES - CONFIG_SIZE))
for ((r = 1; r <= RUNS; r++)); do
    for name in palisade docker-registry; do
        pull_curl "$name"
        C_SECS[$name,$r]="$SECS"
        log "curl (diagnostic) $r from $name: $SECS s, $(mbps "$LAYER_BYTES" "$SECS") MB/s"
    done
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# 6. Results.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

table() { # KIND(skopeo|curl) BYTES
    local kind="$1" bytes="$2" r name p d pl=() dl=() pc=() dc=() secs cpu
    echo "| run | palisade MB/s | docker-registry MB/s | palisade / docker-registry |$([[ $kind == skopeo ]] && echo ' server CPU s (palisade / docker-registry) |')"
    echo "|---|---|---|---|$([[ $kind == skopeo ]] && echo '---|')"
    for ((r = 1; r <= RUNS; r++)); do
        for name in palisade docker-registry; do
            if [[ $kind == skopeo ]]; then secs="${S_SECS[$name,$r]}" cpu="${S_CPU[$name,$r]}"; else secs="${C_SECS[$name,$r]}" cpu=""; fi
            if [[ $name == palisade ]]; then p="$(mbps "$bytes" "$secs")" pl+=("$p") pc+=("$cpu"); else d="$(mbps "$bytes" "$secs")" dl+=("$d") dc+=("$cpu"); fi
        done
        printf '| %s | %s | %s | %s |%s\n' "$r" "$p" "$d" "$(awk -v a="$p" -v b="$d" 'BEGIN { printf "%.2f", a / b }')" \
            "$([[ $kind == skopeo ]] && echo " ${pc[-1]} / ${dc[-1]} |")"
    done
    p="$(median "${pl[@]}")" d="$(median "${dl[@]}")"
    printf '| **median** | **%.1f** | **%.1f** | **%.2f** |%s\n' "$p" "$d" "$(awk -v a="$p" -v b="$d" 'BEGIN { print a / b }')" \
        "$([[ $kind == skopeo ]] && echo " $(median "${pc[@]}") / $(median "${dc[@]}") |")"
}

echo
echo "### skopeo copy docker://… dir:… ($LAYERS × $LAYER_MB MiB layers of random bytes, $TOTAL_BYTES bytes of blobs; MB = 10^6 bytes)"
echo
table skopeo "$TOTAL_BYTES"
echo
echo "Target: palisade / docker-registry ≥ 1.0."
echo
echo "### Diagnostic: curl of every layer to /dev/null, one connection ($LAYER_BYTES bytes)"
echo
table curl "$LAYER_BYTES"
echo
echo "| | |"
echo "|---|---|"
echo "| nproc | $NPROC |"
echo "| load average (1/5/15 min) at start / end | $LOAD_START / $LOAD_END |"
echo "| palisade | $(basename "$BIN"), $(stat -c %s "$BIN") bytes, HTTPS (TLS, Basic auth with an API token) |"
echo "| docker-registry | $(/usr/bin/docker-registry --version | awk '{print $NF}'), $([[ $REG_TLS == 1 ]] && echo 'HTTPS (self-signed; REGISTRY_TLS=0 for plain HTTP)' || echo 'plain HTTP'), no auth, filesystem storage |"
echo "| skopeo / curl | $(skopeo --version | awk '{print $NF}') / $(curl --version | awk 'NR == 1 {print $2}') |"
echo "| order | $RUNS rounds of palisade then docker-registry, skopeo first, then curl |"
