"""pyvmomi side of benches/provider_vsphere.sh: the same machine life cycle as the Rust side,
written as a pyvmomi user would (pyVim.task.WaitForTask for every task).

Create: CloneVM_Task from the template (RelocateSpec pool + datastore; ConfigSpec numCPUs,
memoryMB and the four guestinfo keys), then PowerOnVM_Task. Delete: PowerOffVM_Task, then
Destroy_Task. PARALLEL calls in flight (threads sharing one session, as pyvmomi allows). Each
thread waits with a property collector of its own: concurrent WaitForUpdates on the session's
one collector steal each other's updates (and crash vcsim: "concurrent map writes").

usage: provider_vsphere.py HOST PORT CAFILE USER PASSWORD TEMPLATE_NAME COUNT PARALLEL LABEL
Prints one JSON line.
"""
import base64
import concurrent.futures
import gzip
import json
import ssl
import sys
import threading
import time

from pyVim.connect import SmartConnect, Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim


def gz64(text):
    return base64.b64encode(gzip.compress(text.encode())).decode()


def main():
    host, port, cafile, user, pwd, template, count, parallel, label = sys.argv[1:10]
    count, parallel = int(count), int(parallel)
    ctx = ssl.create_default_context(cafile=cafile)  # the same pinned certificate as the Rust side
    si = SmartConnect(host=host, port=int(port), user=user, pwd=pwd, sslContext=ctx)
    try:
        content = si.RetrieveContent()
        idx = content.searchIndex
        dc = idx.FindByInventoryPath("DC0")
        tpl = idx.FindByInventoryPath("DC0/vm/palisade/" + template)
        cluster = idx.FindByInventoryPath("DC0/host/DC0_C0")
        ds = idx.FindByInventoryPath("DC0/datastore/LocalDS_0")
        pool = cluster.resourcePool
        folder = dc.vmFolder.CreateFolder("pyvmomi-" + label)
        local = threading.local()

        def wait(task):
            if not hasattr(local, "pc"):
                local.pc = content.propertyCollector.CreatePropertyCollector()
            WaitForTask(task, pc=local.pc)

        ca = "MIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGUgZm9yIGJlbmNobWFyayBvbmx5MAoGCCqGSM49BAMC" * 12

        def create(i):
            name = "pybench-%s-%d" % (label, i)
            ud = ("#cloud-config\nhostname: %s\nwrite_files:\n  - path: /etc/palisade/ca.pem\n"
                  "    content: |\n      %s\nruncmd:\n  - [palisade, agent, join, --token, 0123456789abcdef]\n"
                  % (name, ca))
            md = "instance-id: %s\nlocal-hostname: %s\n" % (name, name)
            extra = [vim.option.OptionValue(key=k, value=v) for k, v in [
                ("guestinfo.metadata", gz64(md)), ("guestinfo.metadata.encoding", "gzip+base64"),
                ("guestinfo.userdata", gz64(ud)), ("guestinfo.userdata.encoding", "gzip+base64")]]
            spec = vim.vm.CloneSpec(
                location=vim.vm.RelocateSpec(pool=pool, datastore=ds), template=False, powerOn=False,
                config=vim.vm.ConfigSpec(numCPUs=2, memoryMB=4096, extraConfig=extra))
            task = tpl.CloneVM_Task(folder=folder, name=name, spec=spec)
            wait(task)
            vm = task.info.result
            wait(vm.PowerOnVM_Task())
            return vm

        def delete(vm):
            wait(vm.PowerOffVM_Task())
            wait(vm.Destroy_Task())

        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as ex:
            t0 = time.perf_counter()
            vms = list(ex.map(create, range(count)))
            create_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            list(ex.map(delete, vms))
            delete_s = time.perf_counter() - t1
        if folder.childEntity:
            raise SystemExit("machines left behind in " + folder.name)
        WaitForTask(folder.Destroy_Task())
        print(json.dumps({"impl": "pyvmomi", "label": label, "count": count, "parallel": parallel,
                          "create_s": create_s, "delete_s": delete_s}))
    finally:
        Disconnect(si)


if __name__ == "__main__":
    main()
