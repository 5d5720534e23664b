#!/usr/bin/env python3
"""Helper for benches/serve.sh: timed cold starts, idle RSS, and seeding through the API.

Talks only to 127.0.0.1. Every loop is bounded in count and in time. Every server process it
spawns is written to PIDFILE (so the calling script's trap can stop it too) and is stopped in
a `finally` block.

Subcommands:
  freeport                      print a free TCP port on 127.0.0.1
  coldstart BIN DIR PIDFILE ... spawn `BIN serve` N times, time spawn -> first /readyz 200
  seed ...                      create admin, token, tenant, project, account, profile, clusters
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 12.0
POLL_INTERVAL_S = 0.001


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def insecure_ctx() -> ssl.SSLContext:
    # Readiness polling only: on a fresh data dir the CA does not exist before the server
    # creates it, so it cannot be trusted in advance. Loopback only.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_ready(proc: subprocess.Popen, port: int, ctx: ssl.SSLContext, t0: int) -> float:
    """Poll GET /readyz until 200; return ms since t0 (monotonic ns)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    attempts = 0
    while time.monotonic() < deadline and attempts < 1_000_000:
        attempts += 1
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return (time.monotonic_ns() - t0) / 1e6
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"/readyz not 200 within {READY_TIMEOUT_S}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def cmd_coldstart(a) -> None:
    ctx = insecure_ctx()
    ready, rss = [], []
    total = a.runs + a.warmup
    for i in range(total):
        if a.fresh and os.path.exists(a.dir):
            shutil.rmtree(a.dir)
        port = free_port()
        log = open(a.log, "ab")
        t0 = time.monotonic_ns()
        proc = subprocess.Popen(
            [a.bin, "serve", "--data-dir", a.dir, "--listen", f"127.0.0.1:{port}", "--broker-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            with open(a.pidfile, "a") as pf:
                pf.write(f"{proc.pid}\n")
            ms = wait_ready(proc, port, ctx, t0)
            measured = i >= a.warmup
            if measured:
                ready.append(ms)
                if len(rss) < a.rss_runs:
                    time.sleep(a.rss_after)
                    rss.append(rss_kb(proc.pid))
        finally:
            stop(proc)
            log.close()
    out = {
        "ready_ms": ready,
        "ready_median_ms": statistics.median(ready),
        "ready_max_ms": max(ready),
        "rss_kb": rss,
        "rss_median_kb": statistics.median(rss) if rss else None,
        "rss_max_kb": max(rss) if rss else None,
    }
    print(json.dumps(out))


class Api:
    def __init__(self, port: int, ca: str):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.conn = None
        self.headers = {}

    def call(self, method: str, path: str, body=None, expect=(200, 201)):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):  # one reconnect if the keep-alive connection was closed
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.ctx, timeout=30
                )
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        if resp.status not in expect:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {raw[:500]!r}")
        return resp, (json.loads(raw) if raw else None)


def cmd_seed(a) -> None:
    api = Api(a.port, a.ca)
    password = "bench-password-0123456789"
    api.call("POST", "/v1/setup", {"token": a.setup_token, "username": "admin", "password": password})
    resp, body = api.call("POST", "/v1/login", {"username": "admin", "password": password})
    cookie = resp.getheader("Set-Cookie").split(";", 1)[0]
    api.headers = {"Cookie": cookie, "X-CSRF-Token": body["csrf_token"]}
    _, body = api.call("POST", "/v1/tokens", {"name": "bench"})
    api.headers = {"Authorization": f"Bearer {body['secret']}"}
    with open(a.token_out, "w") as f:
        f.write(body["secret"])
    _, t = api.call("POST", "/v1/tenants", {"name": "bench-tenant"})
    _, p = api.call("POST", "/v1/projects", {"tenant_id": t["id"], "name": "bench-project"})
    _, ca = api.call("POST", "/v1/cloud-accounts", {
        "project_id": p["id"], "name": "bench-vc", "kind": "vsphere",
        "endpoint": "https://vc.local/sdk", "credentials": {"username": "u", "password": "p"},
    })
    _, prof = api.call("POST", "/v1/profiles", {
        "project_id": p["id"], "name": "bench-profile",
        "layers": [{"type": "os", "pack": "ubuntu", "version": "22.04"}],
    })
    deadline = time.monotonic() + a.max_seconds
    t0 = time.monotonic()
    for i in range(a.clusters):
        if time.monotonic() > deadline:
            raise RuntimeError(f"seeding took longer than {a.max_seconds}s ({i} clusters)")
        api.call("POST", "/v1/clusters", {
            "project_id": p["id"], "name": f"bench-{i:04d}", "profile_id": prof["profile"]["id"],
            "cloud_account_id": ca["id"],
            "node_pools": [{"name": "cp", "role": "control-plane", "count": 1,
                            "size": {"cpus": 2, "memory_mib": 4096, "disk_gib": 40}}],
        })
    secs = time.monotonic() - t0
    _, page = api.call("GET", "/v1/clusters?limit=10")
    print(json.dumps({"clusters": a.clusters, "seconds": round(secs, 2),
                      "creates_per_s": round(a.clusters / secs, 1),
                      "first_page_items": len(page["items"])}))


def main() -> None:
    # Turn SIGTERM into SystemExit so that `finally` blocks stop the servers we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("freeport")
    c = sub.add_parser("coldstart")
    c.add_argument("--bin", required=True)
    c.add_argument("--dir", required=True)
    c.add_argument("--pidfile", required=True)
    c.add_argument("--log", required=True)
    c.add_argument("--runs", type=int, default=15)
    c.add_argument("--warmup", type=int, default=1)
    c.add_argument("--fresh", action="store_true", help="delete DIR before every start")
    c.add_argument("--rss-runs", type=int, default=3)
    c.add_argument("--rss-after", type=float, default=3.0)
    s = sub.add_parser("seed")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--ca", required=True)
    s.add_argument("--setup-token", required=True)
    s.add_argument("--token-out", required=True)
    s.add_argument("--clusters", type=int, default=1000)
    s.add_argument("--max-seconds", type=float, default=600)
    a = ap.parse_args()
    if a.cmd == "freeport":
        print(free_port())
    elif a.cmd == "coldstart":
        if not 1 <= a.runs <= 1000:
            sys.exit("--runs must be 1..1000")
        cmd_coldstart(a)
    elif a.cmd == "seed":
        cmd_seed(a)


if __name__ == "__main__":
    main()
