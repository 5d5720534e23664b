#!/usr/bin/env bash
# The OpenStack provider against openstacksdk (Debian's python3-openstacksdk) on the real
# OpenStack peer, same run: per round, each client creates BENCH_SERVERS servers (default 50)
# with at most BENCH_CONCURRENCY (default 10) in flight, each until ACTIVE, then deletes them,
# each until gone. BENCH_ROUNDS rounds (default 3), the clients' order alternating. Prints each
# round and the medians with their ratio (ours / sdk; below 1 means ours is faster).
# Figures go to docs/benchmarks.md. Not part of `cargo test`.
#
# The peer is reused when it runs (openstack.sh start only prints its settings then) and left
# running; every server the bench made is deleted on exit, Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
peers="${PALISADE_PEERS_DIR:-../shared/peers}"
rounds="${BENCH_ROUNDS:-3}"
export BENCH_SERVERS="${BENCH_SERVERS:-50}" BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-10}"
export BENCH_FLAVOR="${BENCH_FLAVOR:-m1.tiny}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
sdk=(/usr/bin/python3 benches/provider_openstack_sdk.py)

# BENCH_BIN: an already built bench executable (skips the build).
exe="${BENCH_BIN:-}"
if [[ -z $exe ]]; then
  echo "building the bench (release)..." >&2
  exe=$(cargo bench --locked --offline --no-run --bench provider_openstack 2>&1 |
    sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
fi
[[ -x "$exe" ]] || { echo "cannot find the provider_openstack bench executable" >&2; exit 1; }

echo "starting (or reusing) the OpenStack peer..." >&2
settings=$("$peers/openstack.sh" start)
set -a
eval "$settings"
set +a
unset OS_CLOUD
eval "$("${sdk[@]}" setup)"

run_id="bench-$$"
cleanup() { "${sdk[@]}" cleanup "$run_id" || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export BENCH_USER="$DEMO_USERNAME" BENCH_PASSWORD="$DEMO_PASSWORD" BENCH_PROJECT="$DEMO_PROJECT_NAME"
export BENCH_NETWORK=palisade-bench-net BENCH_IMAGE="$IMAGE_ID"

results=$(mktemp)
for ((r = 1; r <= rounds; r++)); do
  order=(ours sdk)
  ((r % 2 == 0)) && order=(sdk ours)
  for who in "${order[@]}"; do
    echo "round $r: $who..." >&2
    if [[ $who == ours ]]; then
      line=$(BENCH_PREFIX="$run_id-p$r" timeout 900 "$exe")
    else
      line=$(timeout 900 "${sdk[@]}" run "$run_id-s$r")
    fi
    echo "round $r $who $line" >&2
    echo "$who $line" >>"$results"
  done
done

/usr/bin/python3 - "$results" <<'EOF'
import json, statistics, sys
rows = {"ours": [], "sdk": []}
for line in open(sys.argv[1]):
    who, doc = line.split(" ", 1)
    rows[who].append(json.loads(doc))
def med(who, key):
    return statistics.median(r[key] for r in rows[who])
print("| client | create (until ACTIVE), median s | delete (until gone), median s | each round, create/delete s | failed builds | delete errors |")
print("|---|---|---|---|---|---|")
for who, label in (("ours", "Palisade provider"), ("sdk", "openstacksdk")):
    rs = rows[who]
    each = ", ".join("%.1f/%.1f" % (r["create_s"], r["delete_s"]) for r in rs)
    print(f"| {label} | {med(who, 'create_s'):.1f} | {med(who, 'delete_s'):.1f} | {each} | "
          f"{sum(r['failed'] for r in rs)} | {sum(r['delete_errors'] for r in rs)} |")
print(f"\nratio ours/sdk: create {med('ours', 'create_s') / med('sdk', 'create_s'):.2f}, "
      f"delete {med('ours', 'delete_s') / med('sdk', 'delete_s'):.2f}")
EOF
rm -f "$results"
