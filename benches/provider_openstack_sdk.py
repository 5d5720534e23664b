#!/usr/bin/python3
"""The openstacksdk side of benches/provider_openstack.sh (Debian's python3-openstacksdk, run
with /usr/bin/python3), and the benchmark's setup and cleanup in the peer.

  setup            quotas for the demo project, the bench network and boot image; prints
                   NET_ID=... IMAGE_ID=...
  run PREFIX       one round: create BENCH_SERVERS servers (at most BENCH_CONCURRENCY at a
                   time), each until ACTIVE, then delete them, each until gone; prints one
                   JSON line like the Rust side
  cleanup PREFIX   delete the demo project's servers whose name starts with PREFIX
Clouds come from OS_CLIENT_CONFIG_FILE (the peer's clouds.yaml: peer-admin, peer-demo).
"""
import base64
import concurrent.futures
import json
import os
import sys
import tempfile
import time

import openstack

SERVERS = int(os.environ.get("BENCH_SERVERS", "50"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "10"))
FLAVOR = os.environ.get("BENCH_FLAVOR", "m1.tiny")
POLL = 0.5  # seconds between polls, as on the Rust side
WAIT = 180  # seconds, per server


def setup():
    admin = openstack.connect(cloud="peer-admin")
    demo = openstack.connect(cloud="peer-demo")
    project = admin.identity.find_project("demo", ignore_missing=False)
    admin.set_compute_quotas(project.id, instances=200, cores=400, ram=1000000)
    net = demo.network.find_network("palisade-bench-net")
    if net is None:
        net = demo.network.create_network(name="palisade-bench-net")
    if not list(demo.network.subnets(network_id=net.id)):
        demo.network.create_subnet(
            name="palisade-bench-subnet", network_id=net.id, ip_version=4, cidr="10.78.0.0/22"
        )
    img = demo.image.find_image("palisade-bench-boot")
    if img is not None and img.status != "active":
        demo.image.delete_image(img)
        img = None
    if img is None:
        with tempfile.NamedTemporaryFile(suffix=".raw") as f:
            f.write(b"\0" * 1024)
            f.flush()
            img = demo.create_image(
                "palisade-bench-boot", filename=f.name, disk_format="raw",
                container_format="bare", wait=True,
            )
    print(f"NET_ID={net.id}")
    print(f"IMAGE_ID={img.id}")


def run(prefix):
    demo = openstack.connect(cloud="peer-demo")
    net = demo.network.find_network("palisade-bench-net", ignore_missing=False)
    img = demo.image.find_image("palisade-bench-boot", ignore_missing=False)
    flavor = demo.compute.find_flavor(FLAVOR, ignore_missing=False)
    cluster = f"sdk-{prefix}"

    def create(i):
        name = f"{prefix}-{i}"
        user_data = base64.b64encode(f"#cloud-config\nhostname: {name}\n".encode()).decode()
        try:
            s = demo.compute.create_server(
                name=name, image_id=img.id, flavor_id=flavor.id,
                networks=[{"uuid": net.id}], user_data=user_data,
                metadata={"palisade-cluster": cluster, "palisade-pool": "bench",
                          "palisade-role": "worker"},
                tags=[f"palisade-cluster={cluster}"],
            )
            demo.compute.wait_for_server(s, status="ACTIVE", interval=POLL, wait=WAIT)
            return s.id, True
        except Exception as e:  # a lost build (ERROR) or a 5xx of the peer
            print(f"{name}: {e}", file=sys.stderr)
            return None, False

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(create, range(SERVERS)))
    create_s = time.monotonic() - t0
    failed = sum(1 for _, ok in results if not ok)

    servers = [s for s in demo.compute.servers() if s.name.startswith(prefix + "-")]

    def delete(s):
        try:
            demo.compute.delete_server(s)
            demo.compute.wait_for_delete(s, interval=POLL, wait=WAIT)
            return None
        except Exception as e:
            return f"{s.name}: {e}"

    t1 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        errors = [e for e in pool.map(delete, servers) if e]
    delete_s = time.monotonic() - t1
    for e in errors:
        print(f"delete: {e}", file=sys.stderr)
    print(json.dumps({"create_s": round(create_s, 3), "delete_s": round(delete_s, 3),
                      "failed": failed, "delete_errors": len(errors)}))


def cleanup(prefix):
    demo = openstack.connect(cloud="peer-demo")
    for s in list(demo.compute.servers()):
        if s.name.startswith(prefix):
            for _ in range(3):
                try:
                    demo.compute.delete_server(s)
                    demo.compute.wait_for_delete(s, interval=1, wait=120)
                    break
                except Exception as e:
                    print(f"cleanup {s.name}: {e}", file=sys.stderr)
                    time.sleep(1)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "setup":
        setup()
    elif cmd == "run" and len(sys.argv) == 3:
        run(sys.argv[2])
    elif cmd == "cleanup" and len(sys.argv) == 3:
        cleanup(sys.argv[2])
    else:
        sys.exit(__doc__)
