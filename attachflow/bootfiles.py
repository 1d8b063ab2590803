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

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.domxml import DirectBoot
from attachflow.model import shown


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
