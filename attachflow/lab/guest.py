"""A tiny guest OS for the lab's volume-backed domains.

A guest with no operating system never releases a hot-plugged disk (ACPI PCI unplug needs
the guest to eject the slot), so detach could never be exercised for real. The lab's guests
therefore boot Debian's kernel with a small initramfs: a static busybox whose /init mounts
the pseudo file systems, prints a ready marker on the serial console and sleeps. The kernel
ejects unplugged disks itself (ACPI PCI hotplug is built in), so no module is needed. It
boots under TCG in about ten seconds.

Side effect owned: the kernel and initramfs in the state dir (component ``guest-image``).
"""

from __future__ import annotations

import glob
import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError

READY_MARKER = "attachflow-guest-ready"
CMDLINE = "console=ttyS0 quiet panic=-1"
PACKAGES = ["linux-image-amd64", "busybox-static", "cpio"]

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
echo {READY_MARKER} > /dev/ttyS0
while true; do /bin/busybox sleep 3600; done
"""


def build(dest: Path) -> dict[str, str]:
    """Write vmlinuz and initrd.img into ``dest``; returns paths and the command line."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        raise RuntimeError("no kernel in /boot (apt-get install linux-image-amd64)")
    dest.mkdir(parents=True, exist_ok=True)
    kernel = dest / "vmlinuz"
    shutil.copyfile(kernels[-1], kernel)
    initrd = dest / "initrd.img"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        names = "\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*"))) + "\n"
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                 input=names.encode(), capture_output=True, check=True).stdout
    initrd.write_bytes(gzip.compress(archive, compresslevel=6))
    return {"kernel": str(kernel), "initrd": str(initrd), "cmdline": CMDLINE}


def image_dir() -> Path:
    return layout.path("guest")


class GuestImage(Component):
    name = "guest-image"
    apt_packages = tuple(PACKAGES)

    def up(self, lab: Lab) -> None:
        dest = image_dir()
        if (dest / "vmlinuz").exists() and (dest / "initrd.img").exists():
            return
        try:
            build(dest)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            raise LabError(f"guest image: {e}") from e

    def status(self, lab: Lab) -> Status:
        kernel, initrd = image_dir() / "vmlinuz", image_dir() / "initrd.img"
        ok = kernel.exists() and initrd.exists()
        return Status("up" if ok else "down",
                      details={"kernel": str(kernel), "initrd": str(initrd),
                               "cmdline": CMDLINE})
