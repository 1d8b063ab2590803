"""Attach + detach with the kernel transport on a compute-node VM: attachflow's library
against a floor that does only what cannot be left out.

    python3 -m benchmarks.kernel_attach [--reps N] [--out DIR]   # as root, lab up
                                                                   # with --kernel-nodes

Side by side in one run, interleaved, on ``nodea`` with a guest that is defined but not
running (a guest without an OS never acknowledges a live unplug, and both sides must do
the same work):

- attachflow: ``Client.attach`` then ``Client.detach`` with ``transport="kernel"`` (os-brick
  on the node through ``attachflow host-call`` over ssh, libvirt over qemu+ssh; one
  client, so its storage session and host connections are reused, as a program would);
- floor: the two Cinder calls (attachment create with the node's connector, which returns
  the connection, and attachment delete), one ssh command that logs in with CHAP
  (``iscsiadm`` new node record, CHAP settings, login), waits for the device and runs
  ``virsh attach-device --config``, and one that runs ``virsh detach-device --config``
  and logs out. No checks, no undo, no records.

Results go to DIR/kernel-attach.json and .md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.keystone_cost import _lab_env
from benchmarks.run import machine, summary, write_results

NODE = "nodea"


def _ssh(script: str, stdin: str | None = None) -> str:
    from attachflow.lab.ssh import ssh_argv
    return subprocess.run(ssh_argv(NODE, script), input=stdin, capture_output=True,
                          text=True, check=True, timeout=300).stdout


def _floor_cycle(cinder, volume_id: str, instance: str, domain: str,
                 connector: dict) -> None:
    att = cinder.attachments.create(volume_id, connector, instance)  # a dict
    conn = att["connection_info"]
    iqn, portal, lun = conn["target_iqn"], conn["target_portal"], conn["target_lun"]
    node = f"iscsiadm -m node -T {shlex.quote(iqn)} -p {shlex.quote(portal)}"
    dev = f"/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}"
    xml = (f"<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/>"
           f"<source dev='{dev}'/><target dev='vdb' bus='virtio'/>"
           f"<serial>{volume_id}</serial></disk>")
    # CHAP settings on stdin, never in argv.
    login = (
        "read -r user; read -r password; "
        f"{node} -o new >/dev/null && "
        f"{node} -o update -n node.session.auth.authmethod -v CHAP && "
        f"{node} -o update -n node.session.auth.username -v \"$user\" && "
        f"{node} -o update -n node.session.auth.password -v \"$password\" && "
        f"{node} --login >/dev/null && "
        f"while [ ! -b {shlex.quote(dev)} ]; do sleep 0.1; done && "
        f"echo {shlex.quote(xml)} > /tmp/floor-disk.xml && "
        f"virsh -q attach-device {domain} /tmp/floor-disk.xml --config")
    _ssh(login, f"{conn['auth_username']}\n{conn['auth_password']}\n")
    _ssh(f"virsh -q detach-device {domain} /tmp/floor-disk.xml --config && "
         f"{node} --logout >/dev/null && {node} -o delete")
    cinder.attachments.delete(att["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    import attachflow
    from attachflow.lab import layout
    if not layout.kernel_nodes():
        print("kernel_attach: the lab runs without kernel nodes (lab up --kernel-nodes)",
              file=sys.stderr)
        return 2
    env = _lab_env()
    env["ATTACHFLOW_TRANSPORT"] = "kernel"
    for name in [k for k in env if k.startswith("ATTACHFLOW_BOOT_")]:
        del env[name]
    client = attachflow.Client(env=env)
    from cinderclient import client as cinder_client
    from attachflow.identity import make_session
    session, _endpoint = make_session(env=env)
    cinder = cinder_client.Client("3.71", session=session)

    def new_volume(name: str) -> str:
        vol = cinder.volumes.create(1, name=name)
        while cinder.volumes.get(vol.id).status != "available":
            time.sleep(0.2)
        return vol.id

    root, data_lib, data_floor = (new_volume(f"bench-{n}") for n in ("root", "a", "b"))
    domain = f"bench-{uuid.uuid4().hex[:6]}"
    client.boot(domain, root, host=NODE, memory_mib=64, virt_type="qemu")
    _ssh(f"virsh -q destroy {domain}")
    instance = _ssh(f"virsh domuuid {domain}").strip()
    connector = client.connector(NODE, transport="kernel").to_dict()
    samples: dict[str, list[float]] = {"attachflow": [], "floor": []}
    try:
        for rep in range(args.reps):
            t0 = time.perf_counter()
            client.attach(data_lib, domain, host=NODE)
            client.detach(data_lib, domain, host=NODE)
            samples["attachflow"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _floor_cycle(cinder, data_floor, instance, domain, connector)
            samples["floor"].append(time.perf_counter() - t0)
            print(f"rep {rep + 1}: attachflow {samples['attachflow'][-1]:.1f} s, "
                  f"floor {samples['floor'][-1]:.1f} s", flush=True)
    finally:
        client.delete_guest(domain, host=NODE, force=True)
        # what a floor cycle that failed midway may have left on the node
        _ssh("iscsiadm -m node -u >/dev/null 2>&1; iscsiadm -m node -o delete "
             ">/dev/null 2>&1; true")
        for vol in (root, data_lib, data_floor):
            for att in cinder.attachments.list(search_opts={"volume_id": vol}):
                cinder.attachments.delete(att.id)
            while cinder.volumes.get(vol).status not in ("available", "error"):
                time.sleep(0.2)
            cinder.volumes.delete(vol)
    res = {"reps": args.reps, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "seconds": {k: summary(v) for k, v in samples.items()}}
    s, m = res["seconds"], res["machine"]
    lines = [
        "# Kernel transport on a compute-node VM: attach + detach", "",
        f"{res['date']}; {m.get('cpus')} CPUs, {m.get('kernel', '')}; node {NODE} under "
        f"QEMU TCG; {args.reps} interleaved repetitions; median (min-max).", "",
        "| what | attach + detach | ratio to the floor |", "|---|---|---|"]
    for key, label in (("attachflow", "attachflow library (kernel transport, os-brick "
                                      "on the node)"),
                       ("floor", "floor: 2 Cinder calls, iscsiadm login/logout, virsh "
                                 "attach/detach-device")):
        lines.append(f"| {label} | {s[key]['median']:.1f} s ({s[key]['min']:.1f}-"
                     f"{s[key]['max']:.1f}) | {s[key]['median'] / s['floor']['median']:.1f}x |")
    write_results(Path(args.out), "kernel-attach", res, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
