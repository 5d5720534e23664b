#!/usr/bin/env bash
# The vSphere provider against pyvmomi on the same vcsim, in the same run: time to create COUNT
# machines (clone from a template + power on) and delete them (power off + destroy), ROUNDS
# rounds per PARALLEL setting, the two clients alternating which goes first. Prints every
# round as JSON and a table of medians. Figures go to docs/benchmarks.md.
#
#   benches/provider_vsphere.sh                 # COUNT=50 ROUNDS=5 PARALLEL="1 8"
#   COUNT=20 ROUNDS=3 PARALLEL=1 benches/provider_vsphere.sh
#
# vcsim (../shared/peers/vcsim.sh) runs on plain HTTP behind the bench's TLS terminator (its own
# certificate is RSA-1024, which rustls refuses); both clients go through the terminator and
# both verify its certificate. pyvmomi comes from PyPI into the peer's venv
# ($PEERS_DIR/vcsim/pyvmomi-venv), as `vcsim.sh check` installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-50}
ROUNDS=${ROUNDS:-5}
PARALLEL=${PARALLEL:-"1 8"}
PEERS=${PALISADE_PEERS_DIR:-$(cd .. && pwd)/shared/peers}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/peers}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"

venv=$PEERS_DIR/vcsim/pyvmomi-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pyVmomi' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyvmomi
fi
echo "pyvmomi $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyvmomi"))')" >&2

exe=$(cargo bench --locked --offline --bench provider_vsphere --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "provider_vsphere" and m.get("executable"):
        print(m["executable"])')
[ -x "$exe" ] || { echo "bench executable not built" >&2; exit 1; }

tmp=$(mktemp -d)
vpid='' fpid=''
cleanup() {
  [ -n "$fpid" ] && kill "$fpid" 2>/dev/null || true
  [ -n "$vpid" ] && bash "$PEERS/vcsim.sh" stop "$vpid" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
USER=bench PASSWORD=bench-secret
eval "$(VCSIM_TLS=0 VCSIM_USER=$USER VCSIM_PASSWORD=$PASSWORD bash "$PEERS/vcsim.sh" start "$port" | grep -E '^PID=')"
vpid=$PID
"$exe" front "$port" "$tmp/front.pem" >"$tmp/front.out" &
fpid=$!
for _ in $(seq 1 100); do grep -q '^PORT=' "$tmp/front.out" 2>/dev/null && break; sleep 0.05; done
fport=$(sed -n 's/^PORT=//p' "$tmp/front.out")
[ -n "$fport" ] || { echo "TLS front did not start" >&2; exit 1; }
sdk=https://127.0.0.1:$fport/sdk
eval "$("$exe" prepare "$sdk" "$tmp/front.pem" "$USER" "$PASSWORD")"
echo "vcsim pid $vpid on $port, TLS front $fport, template $TEMPLATE_NAME ($TEMPLATE_ID)" >&2

results=$tmp/results.jsonl
for par in $PARALLEL; do
  for r in $(seq 1 "$ROUNDS"); do
    rust=("$exe" run "$sdk" "$tmp/front.pem" "$USER" "$PASSWORD" "$TEMPLATE_ID" "$COUNT" "$par" "p$par-r$r")
    py=("$venv/bin/python" benches/provider_vsphere.py 127.0.0.1 "$fport" "$tmp/front.pem" "$USER" "$PASSWORD"
      "$TEMPLATE_NAME" "$COUNT" "$par" "p$par-r$r")
    if ((r % 2)); then "${rust[@]}" | tee -a "$results"; "${py[@]}" | tee -a "$results"
    else "${py[@]}" | tee -a "$results"; "${rust[@]}" | tee -a "$results"; fi
  done
done

python3 - "$results" "$COUNT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
count = sys.argv[2]
print()
print(f"| parallel | phase ({count} machines) | palisade median s | pyvmomi median s | pyvmomi / palisade |")
print("| ---: | --- | ---: | ---: | ---: |")
for par in sorted({r["parallel"] for r in rows}):
    for phase in ("create_s", "delete_s", "total"):
        med = {}
        for impl in ("palisade", "pyvmomi"):
            xs = [r["create_s"] + r["delete_s"] if phase == "total" else r[phase]
                  for r in rows if r["impl"] == impl and r["parallel"] == par]
            med[impl] = statistics.median(xs)
        name = {"create_s": "create (clone + power on)", "delete_s": "delete (power off + destroy)", "total": "total"}[phase]
        print(f"| {par} | {name} | {med['palisade']:.2f} | {med['pyvmomi']:.2f} | {med['pyvmomi'] / med['palisade']:.2f} |")
EOF
