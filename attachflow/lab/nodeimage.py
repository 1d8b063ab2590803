"""The compute-node image: a Debian 12 root file system built from Debian's packages with
debootstrap, holding what a production KVM compute host runs (systemd, udev, open-iscsi,
multipath-tools, libvirt + QEMU, sshd, Python with os-brick).

The image is cached on the machine keyed by its recipe (suite, mirror, packages, and every
file the build writes into it), so a second `lab up --kernel-nodes` reuses it and a changed
recipe builds a new one. What differs between the nodes (name, address, keys, initiator
name, attachflow itself) is not in the image: each node reads it from a small
configuration disk at boot (nodes.py).

Side effects owned: the image directories under the cache dir (``node-image-<key>``) and,
while a build runs, its work directory with /proc mounted in the chroot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What debootstrap installs itself; the rest comes from apt inside the chroot, where a
# policy-rc.d keeps the packages' daemons from starting on the build machine.
BASE = ("systemd-sysv", "udev", "kmod", "iproute2")
PACKAGES = (
    "linux-image-amd64",
    "openssh-server",
    "open-iscsi", "multipath-tools", "sg3-utils", "lsscsi",
    "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86",
    "python3", "python3-installer", "python3-os-brick", "python3-click", "python3-tenacity",
    "python3-paramiko", "python3-libvirt",
    "procps", "util-linux", "ca-certificates",
)
# Timers and services a short-lived lab node has no use for, and that would compete for
# its emulated CPU while the tests run.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
                  "e2scrub_all.timer", "fstrim.timer", "logrotate.timer",
                  "dpkg-db-backup.timer", "e2scrub_reap.service", "libvirt-guests.service")
ENABLED_UNITS = ("attachflow-node.service",)
# (template under templates/node-image, path in the image, mode)
FILES = (
    ("attachflow-node-setup", "usr/local/sbin/attachflow-node-setup", 0o755),
    ("attachflow-node.service", "etc/systemd/system/attachflow-node.service", 0o644),
    ("multipath.conf", "etc/multipath.conf", 0o644),
    ("fstab", "etc/fstab", 0o644),
)
ROOT_SIZE = "4G"  # sparse: the file system holds about 1.1 GiB


@dataclass(frozen=True)
class Image:
    """A built image: the root disk and the kernel and initramfs to boot it with."""
    dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def complete(self) -> bool:
        return (self.dir / "recipe.json").exists()


def _file_text(template: str) -> str:
    return layout.render_text(f"node-image/{template}")


def recipe() -> dict:
    return {"suite": SUITE, "mirror": MIRROR, "base": list(BASE), "packages": list(PACKAGES),
            "disabled": list(DISABLED_UNITS), "enabled": list(ENABLED_UNITS),
            "size": ROOT_SIZE,
            "files": {dest: [mode, _file_text(t)] for t, dest, mode in FILES}}


def recipe_key() -> str:
    text = json.dumps(recipe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def current() -> Image:
    return Image(layout.CACHE_DIR / f"node-image-{recipe_key()}")


def _release(work: Path) -> None:
    """End whatever still runs inside ``work`` and unmount what is mounted there (a build
    that was killed half-way)."""
    prefix = str(work) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (os.readlink(proc / "root") + "/").startswith(prefix):
                os.kill(int(proc.name), signal.SIGKILL)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if (m + "/").startswith(prefix)), reverse=True):
        run(["umount", "-l", point], check=False)


def _copy_boot_files(root: Path, work: Path) -> None:
    """The newest kernel and initramfs of the root file system, next to it in ``work``:
    the nodes boot them directly."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError("node image: no kernel or initramfs was installed")
    shutil.copyfile(kernels[-1], work / "vmlinuz")
    shutil.copyfile(initrds[-1], work / "initrd.img")


def _make_root_disk(root: Path, work: Path) -> None:
    """``work``/root.qcow2 holding the root file system (made from the directory, so the
    build needs no loop device)."""
    raw = work / "root.raw"
    run(["truncate", "-s", ROOT_SIZE, str(raw)])
    run(["mke2fs", "-q", "-t", "ext4", "-L", "af-root", "-d", str(root), str(raw)],
        timeout=600)
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "root.qcow2")],
        timeout=600)
    raw.unlink()


def build(echo: Callable[[str], None]) -> Image:
    """Build the image for the current recipe into the cache; returns it."""
    image = current()
    work = image.dir.with_name(image.dir.name + ".build")
    _release(work)
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    work.mkdir(parents=True)
    env = {**layout.DAEMON_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        echo(f"node image {image.dir.name}: debootstrap {SUITE} (about a minute)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}", SUITE,
             str(root), MIRROR], env=env, timeout=1800)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        try:
            echo(f"node image {image.dir.name}: {len(PACKAGES)} packages "
                 "(about two minutes)")
            run(["chroot", str(root), "apt-get", "install", "-y", "-q",
                 "--no-install-recommends", *PACKAGES], env=env, timeout=3600)
            run(["chroot", str(root), "apt-get", "clean"], env=env)
        finally:
            _release(root)
        for template, dest, mode in FILES:
            layout.write(root / dest, _file_text(template), mode)
        run(["chroot", str(root), "systemctl", "enable", *ENABLED_UNITS], env=env)
        run(["chroot", str(root), "systemctl", "disable", *DISABLED_UNITS], env=env)
        # Every node gets its own host key from its configuration disk.
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        policy.unlink()
        _copy_boot_files(root, work)
        echo(f"node image {image.dir.name}: root file system")
        _make_root_disk(root, work)
        shutil.rmtree(root)
        layout.write(work / "recipe.json", json.dumps(recipe(), indent=1) + "\n")
    except BaseException as exc:
        _release(work)
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, LabError):
            raise
        if isinstance(exc, Exception):
            raise LabError(f"node image build failed: {exc}") from exc
        raise
    shutil.rmtree(image.dir, ignore_errors=True)
    os.replace(work, image.dir)
    # Images of older recipes are of no further use.
    for old in layout.CACHE_DIR.glob("node-image-*"):
        if old != image.dir and not old.name.endswith(".build"):
            shutil.rmtree(old, ignore_errors=True)
    return image


class NodeImage(Component):
    name = "node-image"
    apt_packages = ("debootstrap", "qemu-utils", "e2fsprogs")

    def up(self, lab: Lab) -> None:
        if not current().complete:
            build(lab.echo)

    def status(self, lab: Lab) -> Status:
        image = current()
        size = image.root.stat().st_size if image.complete else 0
        return Status("up" if image.complete else "down",
                      details={"image": str(image.dir), "recipe": recipe_key(),
                               "size_mib": size // (1 << 20)})

