"""Compute-node virtual machines (`lab up --kernel-nodes`): ``nodea`` and ``nodeb`` boot the
Debian image (nodeimage.py) under QEMU TCG, with a kernel that has the iSCSI initiator,
SCSI and dm-multipath this machine's kernel lacks. Each runs systemd with iscsid,
multipathd, libvirtd and sshd, and the attachflow that brought the lab up (a wheel of
its checkout or of its installed files, nodewheel.py); the guests they run are nested,
under TCG as well.

Side effects owned: the node's files in the state dir (its copy-on-write root disk over
the cached image, its configuration disk, console log), its tap device on the lab bridge,
and its QEMU process.
"""

from __future__ import annotations

import shutil

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError, NeverReady
from attachflow.lab.network import link_exists
from attachflow.lab.nodeimage import current as current_image
from attachflow.lab.nodewheel import wheel
from attachflow.lab.shell import port_open, run, tail
from attachflow.lab.ssh import client_key, host_dir, known_hosts, ssh_argv
from attachflow.lab.supervision import Program

MEMORY_MIB = 1536
CPUS = 2
# Appended to the kernel command line: the root disk, the serial console the log file
# captures, and eth0 as the network interface's name.
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=0"
# What a node runs once it is usable: its settings applied, the initiator, multipath and
# libvirt answering, and attachflow installed.
UNITS = ("attachflow-node.service", "iscsid.socket", "multipathd.service",
         "libvirtd.socket", "ssh.service")
# Prints "failed UNIT: last journal line" for a unit that failed, or "failed boot: ..." when
# systemd dropped a job to break an ordering cycle (the boot will not get better by
# waiting), "ready" once everything answers, otherwise what it still waits for.
READY_PROBE = f"""
cycle=$(journalctl -b -q -o cat | grep -m1 'deleted to break ordering cycle')
if [ -n "$cycle" ]; then echo "failed boot: $cycle"; exit 0; fi
for u in {' '.join(UNITS)}; do
    if systemctl is-failed --quiet $u; then
        echo "failed $u: $(journalctl -q -u $u -n 1 -o cat)"; exit 0
    fi
done
waiting=""
for u in {' '.join(UNITS)}; do
    systemctl is-active --quiet $u || waiting="$waiting $u ($(systemctl is-active $u))"
done
if [ -n "$waiting" ]; then echo "waiting for$waiting"; exit 0; fi
command -v attachflow >/dev/null || {{ echo "waiting for attachflow to be installed"; exit 0; }}
virsh -q -c qemu:///system list --all >/dev/null || {{ echo "waiting for libvirtd"; exit 0; }}
echo ready
"""

def tap(node: str) -> str:
    return layout.TAP_PREFIX + node


def mac(node: str) -> str:
    last = int(layout.NODES[node].rsplit(".", 1)[1])
    return f"52:54:00:af:00:{last:02x}"


class KernelNode(Component):
    requires = ("network", "ssh-keys", "node-image")
    apt_packages = ("qemu-system-x86", "qemu-utils", "e2fsprogs")
    # A node boots systemd under TCG while the other one does too.
    ready_timeout = 420
    poll_interval = 2.0

    def __init__(self, node: str) -> None:
        self.name = node
        self.address = layout.NODES[node]
        self.dir = host_dir(node)

    @property
    def program(self) -> str:
        return f"{self.name}-qemu"

    def programs(self) -> list[Program]:
        image = current_image()
        return [Program(self.program, [
            "qemu-system-x86_64", "-name", self.name, "-machine", "pc,accel=tcg",
            "-cpu", "max", "-smp", str(CPUS), "-m", str(MEMORY_MIB), "-nodefaults",
            "-display", "none", "-no-user-config",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", CMDLINE,
            "-drive", f"file={self.dir / 'root.qcow2'},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={self.dir / 'config.img'},if=virtio,format=raw,readonly=on",
            "-netdev", f"tap,id=net0,ifname={tap(self.name)},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,mac={mac(self.name)}",
            "-serial", f"file:{self.dir / 'console.log'}",
            "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
        ], group=self.name, autorestart=False)]

    def _config_disk(self) -> None:
        """The node's own settings, read by attachflow-node-setup at boot."""
        cfg = self.dir / "config"
        shutil.rmtree(cfg, ignore_errors=True)
        (cfg / "root-ssh").mkdir(parents=True)
        cfg.chmod(0o700)
        layout.write(cfg / "node.env", f"NODE_NAME={self.name}\n"
                     f"NODE_ADDRESS={self.address}\nNODE_PREFIX={layout.PREFIX_LEN}\n")
        layout.render("host/hosts", cfg / "hosts")
        layout.render("host/initiatorname.iscsi", cfg / "initiatorname.iscsi",
                      host=self.name, initiator=layout.initiator_name(self.name))
        for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            shutil.copy2(self.dir / name, cfg / name)
        for name in ("id_ed25519", "id_ed25519.pub", "authorized_keys", "known_hosts",
                     "config"):
            shutil.copy2(self.dir / "root-ssh" / name, cfg / "root-ssh" / name)
        shutil.copy2(wheel(), cfg)
        img = self.dir / "config.img"
        img.unlink(missing_ok=True)
        run(["mke2fs", "-q", "-t", "ext4", "-L", "af-node", "-d", str(cfg), str(img), "64M"])
        img.chmod(0o600)

    def up(self, lab: Lab) -> None:
        if lab.program_pids([self.program]):
            return
        image = current_image()
        if not image.complete:
            raise LabError(f"{self.name}: no node image (component node-image)")
        # A fresh root disk over the image on every boot: nothing of an earlier lab stays.
        overlay = self.dir / "root.qcow2"
        overlay.unlink(missing_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(image.root), str(overlay)])
        self._config_disk()
        (self.dir / "console.log").unlink(missing_ok=True)
        if not link_exists(tap(self.name)):
            run(["ip", "tuntap", "add", "dev", tap(self.name), "mode", "tap"])
        run(["ip", "link", "set", tap(self.name), "master", layout.BRIDGE, "up"])
        lab.supervisor.start(self.program)

    def ready(self, lab: Lab) -> bool:
        # Not-yet answers are raised: the wait reports the last one when it gives up, so a
        # boot that never finishes says where it stopped.
        if not port_open(self.address, 22):
            raise LabError(f"ssh port closed; console: {self._console_tail()}")
        cp = run(ssh_argv(self.name, READY_PROBE), check=False, timeout=60)
        answer = cp.stdout.strip()
        if answer.startswith("failed "):
            raise NeverReady(f"{self.name}: {answer} (console log "
                           f"{self.dir / 'console.log'})")
        if answer != "ready":
            raise LabError(answer or f"ssh: {tail(cp.stderr)}")
        return True

    def _console_tail(self) -> str:
        """The console's last non-empty line: where a boot that never opens ssh stopped."""
        try:
            text = (self.dir / "console.log").read_bytes()[-4096:]
        except OSError:
            return "no console log"
        lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        return lines[-1][:200] if lines else "empty"

    def down(self, lab: Lab) -> list[str]:
        problems = super().down(lab)
        if link_exists(tap(self.name)):
            cp = run(["ip", "link", "del", tap(self.name)], check=False)
            if cp.returncode != 0 and link_exists(tap(self.name)):
                problems.append(f"ip link del {tap(self.name)}: {tail(cp.stderr)}")
        return problems

    def hosts_entry(self) -> str:
        """This node's entry in the hosts file: reached over ssh with the lab's key, and
        by the other node's libvirtd (migrations) with the node's own root keys."""
        q = layout.toml_string
        return layout.render_text(
            "node/hosts-entry.toml", host=self.name, address=q(self.address),
            ssh_key=q(str(client_key())), known_hosts=q(str(known_hosts())),
            libvirt_uri=q(layout.libvirt_uri(self.name)),
            migration_uri=q(f"qemu+ssh://root@{self.address}/system"))

    def status(self, lab: Lab) -> Status:
        state, pids = lab.program_status([self.program])
        details = {"console": str(self.dir / "console.log"),
                   "libvirt_uri": layout.libvirt_uri(self.name),
                   "ssh": f"root@{self.address}:22", "tap": tap(self.name)}
        if state == "up" and not port_open(self.address, 22):
            state = "booting"
        return Status(state, pids, address=self.address, details=details)
