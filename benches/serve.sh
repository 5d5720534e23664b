#!/usr/bin/env bash
# Benchmark `palisade serve` (release build) on this machine, loopback only.
#
# Measures:
#   1. cold start: process spawn -> first `GET /readyz` 200, on a fresh data dir and on a data
#      dir holding $BENCH_CLUSTERS clusters (median and max of $BENCH_RUNS starts each);
#   2. idle RSS (VmRSS) $BENCH_RSS_AFTER s after start, on both data dirs;
#   3. throughput and p99 latency under wrk (-t2 -c32 -d15s, HTTPS, bearer token) of
#      GET /v1/clusters (default page of 100), GET /v1/clusters?limit=10, and GET /healthz
#      (the ceiling of the HTTPS stack on this machine); plus ?limit=1 as a diagnostic.
# and prints a markdown table of each figure, its target and figure/target on stdout.
# Progress goes to stderr.
#
# Usage: benches/serve.sh
# Environment (all optional):
#   PALISADE_BIN      release binary to test; default: build it with cargo into $CARGO_TARGET_DIR
#   CARGO_TARGET_DIR  where cargo builds (default: <repo>/target)
#   BENCH_CLUSTERS    clusters seeded into the second data dir (default 1000)
#   BENCH_RUNS        measured cold starts per data dir (default 15, plus 1 discarded warm-up)
#   BENCH_RSS_AFTER   seconds after ready at which idle RSS is read (default 3)
#   BENCH_DURATION    wrk duration (default 15s); BENCH_THREADS (2), BENCH_CONNS (32)
#   BENCH_KEEP=1      keep the work directory (data dirs, logs, raw wrk output); it is also
#                     kept when the script fails
#
# Requires: bash, python3 (stdlib only), curl, wrk. Listens and connects on 127.0.0.1 only.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
HELPER="$HERE/serve_helper.py"

CLUSTERS="${BENCH_CLUSTERS:-1000}"
RUNS="${BENCH_RUNS:-15}"
RSS_AFTER="${BENCH_RSS_AFTER:-3}"
DURATION="${BENCH_DURATION:-15s}"
THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNS:-32}"

# Targets (from the issue).
T_READY_MS=300
T_RSS_MB=40
T_RPS=15000

log() { printf '[serve.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in python3 curl wrk; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# ---------------------------------------------------------------------------------------------
# Work directory and cleanup of every server process this script (or its helper) started.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/palisade-bench.XXXXXX")"
PIDFILE="$WORK/pids"
: >"$PIDFILE"
BIN=""

cleanup() {
    local rc=$? pid n
    trap - EXIT INT TERM
    # Our own children first (the helper stops the servers it started when it gets SIGTERM).
    for pid in "${WRK_PID:-}" "${HELPER_PID:-}"; do
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    [[ -n "${HELPER_PID:-}" ]] && wait "$HELPER_PID" 2>/dev/null || true
    if [[ -s "$PIDFILE" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            # Only our own palisade processes: the pid must still run our binary.
            if [[ -n "$BIN" && "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$BIN" ]]; then
                kill -TERM "$pid" 2>/dev/null || true
                for ((n = 0; n < 100; n++)); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$PIDFILE"
    fi
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

# ---------------------------------------------------------------------------------------------
# Binary.
if [[ -n "${PALISADE_BIN:-}" ]]; then
    BIN="$(readlink -f "$PALISADE_BIN")"
else
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    log "building the release binary into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet --bin palisade) >&2
    BIN="$(readlink -f "$TARGET_DIR/release/palisade")"
fi
[[ -x "$BIN" ]] || die "no executable at $BIN"

# ---------------------------------------------------------------------------------------------
# A long-running server on DIR (for seeding and for wrk). Sets SERVER_PID, SERVER_PORT,
# SETUP_TOKEN (empty unless first start).
start_server() {
    local dir="$1" out="$WORK/server-$RANDOM.out" n
    SERVER_PORT="$(python3 "$HELPER" freeport)"
    "$BIN" serve --data-dir "$dir" --listen "127.0.0.1:$SERVER_PORT" --broker-listen 127.0.0.1:0 \
        >"$out" 2>>"$WORK/server.log" </dev/null &
    SERVER_PID=$!
    echo "$SERVER_PID" >>"$PIDFILE"
    for ((n = 0; n < 600; n++)); do # at most 30 s
        grep -q '^  Data directory:' "$out" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited early; see $WORK/server.log"
        sleep 0.05
    done
    grep -q '^  Data directory:' "$out" || die "server printed no banner within 30 s"
    SETUP_TOKEN="$(sed -n 's/^  Setup token: *//p' "$out")"
    local listen
    listen="$(sed -n 's/^  Listening on: *//p' "$out")"
    [[ "$listen" == "127.0.0.1:$SERVER_PORT" ]] || die "server listens on '$listen', expected 127.0.0.1:$SERVER_PORT"
    for ((n = 0; n < 200; n++)); do # at most ~10 s
        curl -sf --max-time 1 --cacert "$dir/pki/ca.crt" "https://127.0.0.1:$SERVER_PORT/readyz" >/dev/null && return 0
        sleep 0.05
    done
    die "server not ready within 10 s"
}

stop_server() {
    local n
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((n = 0; n < 150; n++)); do # at most 15 s
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# CPU time (clock ticks, user+system) of a process.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
proc_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Run wrk against PATH on the running server. Sets W_RPS, W_P99_MS, W_CPU_US (server CPU per
# request, µs), W_CPU_SHARE (server CPU as % of all cores over the run).
run_wrk() {
    local name="$1" path="$2" auth="$3" script="${4:-}" out="$WORK/wrk-$1.txt" c0 c1 hz
    local args=(-t"$THREADS" -c"$CONNS" -d"$DURATION" --latency --timeout 5s)
    [[ "$auth" == auth ]] && args+=(-H "Authorization: Bearer $API_TOKEN")
    [[ -n "$script" ]] && args+=(-s "$script")
    log "wrk ${args[*]/Bearer */Bearer ***} https://127.0.0.1:$SERVER_PORT$path"
    hz="$(getconf CLK_TCK)"
    c0="$(cpu_ticks "$SERVER_PID")"
    wrk "${args[@]}" "https://127.0.0.1:$SERVER_PORT$path" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk failed: $(cat "$out")"
    WRK_PID=""
    c1="$(cpu_ticks "$SERVER_PID")"
    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        die "wrk got error responses on $path: $(grep 'Non-2xx' "$out")"
    fi
    if grep -q 'Socket errors' "$out"; then
        log "warning: $(grep 'Socket errors' "$out") on $path"
    fi
    W_RPS="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    W_P99_MS="$(awk '$1 == "99%" {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
        printf "%.2f", v }' "$out")"
    local total secs
    total="$(awk '/requests in/ {print $1}' "$out")"
    secs="$(awk -v d="$DURATION" 'BEGIN { n = d + 0; if (d ~ /m$/) n *= 60; print n }')"
    W_CPU_US="$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v n="$total" 'BEGIN { printf "%.0f", (b - a) / hz * 1e6 / n }')"
    W_CPU_SHARE="$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v s="$secs" -v c="$(nproc)" 'BEGIN { printf "%.0f", (b - a) / hz / (s * c) * 100 }')"
    [[ -n "$W_RPS" && -n "$W_P99_MS" ]] || die "cannot parse wrk output: $(cat "$out")"
    log "  -> $W_RPS req/s, p99 $W_P99_MS ms, server CPU $W_CPU_US µs/request ($W_CPU_SHARE% of all cores)"
}

# Run the Python helper in the background and wait for it, so that a signal to this script
# is handled at once (bash runs traps only between foreground commands). Its stdout goes to $1.
helper() {
    local out="$1"
    shift
    python3 "$HELPER" "$@" >"$out" &
    HELPER_PID=$!
    wait "$HELPER_PID" || die "helper $1 failed"
    HELPER_PID=""
}

json_get() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# ---------------------------------------------------------------------------------------------
FRESH="$WORK/fresh"
SEEDED="$WORK/seeded"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "binary: $BIN ($(stat -c %s "$BIN") bytes); load average before: $LOAD_BEFORE"
log "seeding $CLUSTERS clusters into $SEEDED through the API"
start_server "$SEEDED"
[[ -n "$SETUP_TOKEN" ]] || die "fresh data dir printed no setup token"
helper "$WORK/seed.json" seed --port "$SERVER_PORT" --ca "$SEEDED/pki/ca.crt" \
    --setup-token "$SETUP_TOKEN" --token-out "$WORK/token" --clusters "$CLUSTERS" \
    --max-seconds 900
log "  -> $(cat "$WORK/seed.json")"
stop_server

log "cold start x$RUNS (+1 warm-up) on a fresh data dir"
helper "$WORK/cold-fresh.json" coldstart --bin "$BIN" --dir "$FRESH" --fresh --runs "$RUNS" \
    --pidfile "$PIDFILE" --log "$WORK/server.log" --rss-after "$RSS_AFTER"
log "  -> $(cat "$WORK/cold-fresh.json")"

log "cold start x$RUNS (+1 warm-up) on the data dir with $CLUSTERS clusters"
helper "$WORK/cold-seeded.json" coldstart --bin "$BIN" --dir "$SEEDED" --runs "$RUNS" \
    --pidfile "$PIDFILE" --log "$WORK/server.log" --rss-after "$RSS_AFTER"
log "  -> $(cat "$WORK/cold-seeded.json")"

log "load test on the data dir with $CLUSTERS clusters"
start_server "$SEEDED"
API_TOKEN="$(cat "$WORK/token")"
BASE="https://127.0.0.1:$SERVER_PORT"
items="$(curl -sf --max-time 10 --cacert "$SEEDED/pki/ca.crt" -H "Authorization: Bearer $API_TOKEN" \
    "$BASE/v1/clusters" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')"
[[ "$items" == 100 || "$items" == "$CLUSTERS" ]] || die "GET /v1/clusters returned $items items"
log "GET /v1/clusters returns $items items; response $(curl -sf --max-time 10 --cacert "$SEEDED/pki/ca.crt" \
    -H "Authorization: Bearer $API_TOKEN" "$BASE/v1/clusters" | wc -c) bytes"

run_wrk healthz /healthz noauth
H_RPS=$W_RPS H_P99=$W_P99_MS H_CPU=$W_CPU_US H_SHARE=$W_CPU_SHARE
run_wrk clusters100 /v1/clusters auth
C100_RPS=$W_RPS C100_P99=$W_P99_MS C100_CPU=$W_CPU_US C100_SHARE=$W_CPU_SHARE
# Every request distinct (an ignored query parameter that changes each time), so no response
# comes from the appliance's list cache: the cost of reading and rendering the page each time.
cat >"$WORK/distinct.lua" <<'LUA'
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, wrk.path .. "?distinct=" .. n .. "-" .. math.random(1000000000))
end
LUA
run_wrk clusters100u /v1/clusters auth "$WORK/distinct.lua"
C100U_RPS=$W_RPS C100U_P99=$W_P99_MS C100U_CPU=$W_CPU_US
run_wrk clusters10 "/v1/clusters?limit=10" auth
C10_RPS=$W_RPS C10_P99=$W_P99_MS C10_CPU=$W_CPU_US C10_SHARE=$W_CPU_SHARE
run_wrk clusters1 "/v1/clusters?limit=1" auth
C1_RPS=$W_RPS C1_P99=$W_P99_MS C1_CPU=$W_CPU_US C1_SHARE=$W_CPU_SHARE
LOAD_RSS_KB="$(proc_kb "$SERVER_PID" VmRSS)"
LOAD_HWM_KB="$(proc_kb "$SERVER_PID" VmHWM)"
stop_server

# ---------------------------------------------------------------------------------------------
F="$WORK/cold-fresh.json" S="$WORK/cold-seeded.json"
F_MED="$(json_get "$F" ready_median_ms)" F_MAX="$(json_get "$F" ready_max_ms)"
S_MED="$(json_get "$S" ready_median_ms)" S_MAX="$(json_get "$S" ready_max_ms)"
F_RSS="$(json_get "$F" rss_median_kb)" S_RSS="$(json_get "$S" rss_median_kb)"
F_RSS_MAX="$(json_get "$F" rss_max_kb)" S_RSS_MAX="$(json_get "$S" rss_max_kb)"

# row LABEL FIGURE UNIT TARGET KIND(max|min|none)
row() {
    awk -v l="$1" -v f="$2" -v u="$3" -v t="$4" -v k="$5" 'BEGIN {
        if (k == "none") { printf "| %s | %.1f %s | — | — | — |\n", l, f, u; exit }
        r = f / t; ok = (k == "max") ? (f < t) : (f >= t);
        printf "| %s | %.1f %s | %s %s %s | %.2f | %s |\n", l, f, u, (k == "max") ? "<" : "≥", t, u, r, ok ? "yes" : "**no**"
    }'
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "### Results ($(nproc) cores, $CLUSTERS clusters, wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS cold starts each)"
echo
echo "| Measure | Figure | Target | Figure / target | Met |"
echo "|---|---|---|---|---|"
row "Cold start to /readyz 200, fresh data dir, median" "$F_MED" ms "$T_READY_MS" max
row "Cold start to /readyz 200, fresh data dir, max" "$F_MAX" ms "$T_READY_MS" max
row "Cold start to /readyz 200, $CLUSTERS clusters, median" "$S_MED" ms "$T_READY_MS" max
row "Cold start to /readyz 200, $CLUSTERS clusters, max" "$S_MAX" ms "$T_READY_MS" max
row "Idle RSS ${RSS_AFTER}s after start, fresh data dir (median of 3)" "$(mb "$F_RSS")" MiB "$T_RSS_MB" max
row "Idle RSS ${RSS_AFTER}s after start, $CLUSTERS clusters (median of 3)" "$(mb "$S_RSS")" MiB "$T_RSS_MB" max
row "GET /v1/clusters (page of 100), requests/s" "$C100_RPS" "req/s" "$T_RPS" min
row "GET /v1/clusters (page of 100), p99 latency" "$C100_P99" ms 0 none
row "GET /v1/clusters (page of 100), every request distinct (no cache), requests/s" "$C100U_RPS" "req/s" "$T_RPS" min
row "GET /v1/clusters (page of 100), every request distinct (no cache), p99 latency" "$C100U_P99" ms 0 none
row "GET /v1/clusters?limit=10, requests/s" "$C10_RPS" "req/s" "$T_RPS" min
row "GET /v1/clusters?limit=10, p99 latency" "$C10_P99" ms 0 none
row "GET /healthz (ceiling), requests/s" "$H_RPS" "req/s" "$T_RPS" min
row "GET /healthz (ceiling), p99 latency" "$H_P99" ms 0 none
echo
echo "Diagnostics (no target):"
echo
echo "| Measure | Figure |"
echo "|---|---|"
echo "| GET /v1/clusters?limit=1, requests/s / p99 | $(printf '%.0f' "$C1_RPS") req/s / $C1_P99 ms |"
echo "| Server CPU per request: /healthz, limit=1, limit=10, limit=100, limit=100 uncached | $H_CPU / $C1_CPU / $C10_CPU / $C100_CPU / $C100U_CPU µs |"
echo "| Server share of all CPU during the run: /healthz, limit=1, limit=10, limit=100 | $H_SHARE / $C1_SHARE / $C10_SHARE / $C100_SHARE % |"
echo "| Idle RSS max of 3: fresh / $CLUSTERS clusters | $(mb "$F_RSS_MAX") / $(mb "$S_RSS_MAX") MiB |"
echo "| RSS after the wrk runs (VmRSS / peak VmHWM) | $(mb "$LOAD_RSS_KB") / $(mb "$LOAD_HWM_KB") MiB |"
echo "| Load average (1/5/15 min) before / after the benchmark | $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg) |"
echo "| Seeding $CLUSTERS clusters through the API | $(json_get "$WORK/seed.json" seconds) s ($(json_get "$WORK/seed.json" creates_per_s) creates/s, one connection) |"
