"""The files a direct boot (``--kernel``/``--initrd``) names, checked on the compute host
before a boot changes anything.

libvirt reads them only when the domain starts, the last step of a boot: a path that
exists where attachflow runs but not on that host would fail there, after the volume was
connected, and the boot would have to be undone. Looking first turns that into one line
that names the host and the path.

Side effect owned: none that changes anything; it looks at files on the host, through
the host's ``Runner`` (over SSH), or in this process for ``local``.
"""

from __future__ import annotations

import os

from typing import Mapping

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.domxml import DirectBoot
from attachflow.hosts import HostConfig
from attachflow.model import shown


def direct_boot_for(cfg: HostConfig, kernel: str | None = None, initrd: str | None = None,
                    cmdline: str | None = None, env: Mapping[str, str] | None = None
                    ) -> DirectBoot | None:
    """What to boot on the host of ``cfg``: each of kernel, initrd and command line as
    given, else the host's entry in the hosts file, else the environment. The entry comes
    before the environment because its paths are that host's: one variable for every
    host may name a file that only one of them has."""
    env = os.environ if env is None else env
    kernel = kernel or cfg.boot_kernel or env.get("ATTACHFLOW_BOOT_KERNEL")
    if not kernel:
        return None
    return DirectBoot(kernel, initrd or cfg.boot_initrd or env.get("ATTACHFLOW_BOOT_INITRD"),
                      cmdline or cfg.boot_cmdline or env.get("ATTACHFLOW_BOOT_CMDLINE"))


def check_direct_boot(host: ComputeHost, boot: DirectBoot | None) -> None:
    """Raise InputError unless ``host`` can read the kernel and initrd of ``boot``."""
    if boot is None:
        return
    for what, path in (("kernel", boot.kernel), ("initrd", boot.initrd)):
        if path and not _readable(host, path):
            raise errors.InputError(
                f"the {what} {shown(path)} is not a readable file on {host.name}: boot "
                f"a {what} that is there (--{what}, or boot_{what} in {host.name}'s entry "
                "of the hosts file) or copy it there; nothing was changed")


def _readable(host: ComputeHost, path: str) -> bool:
    if host.cfg.local:
        return os.path.isfile(path) and os.access(path, os.R_OK)
    code, _out, err = host.runner.run(["test", "-r", path])
    if code not in (0, 1):
        raise errors.HostError(f"{host.name}: could not look for {shown(path)}: "
                               f"test exited {code}: {shown(err.decode(errors='replace'))}")
    return code == 0
