"""The attachflow wheel that the compute-node VMs install (nodes.py puts it on each node's
configuration disk): the very attachflow that brings the lab up, so that `attachflow
host-call` on a node speaks the same protocol as the attachflow calling it.

From a checkout it is ``pip wheel`` of the source tree. attachflow installed by pip has
no source tree, but its installed files are a wheel's contents already: they are packed
into one again, with the distribution's own metadata and a fresh RECORD.

Side effect owned: the wheel directory in the lab's state dir (``nodes-wheel``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import shutil
import sys
import threading
import zipfile
from pathlib import Path, PurePosixPath

import attachflow
from attachflow.lab import layout
from attachflow.lab.errors import LabError
from attachflow.lab.shell import run

_LOCK = threading.Lock()
# What pip writes into an installed .dist-info about the installation itself; a wheel
# carries none of it (WHEEL and RECORD are written anew).
_INSTALL_ONLY = {"INSTALLER", "REQUESTED", "RECORD", "WHEEL", "direct_url.json"}
WHEEL_FILE = ("Wheel-Version: 1.0\nGenerator: attachflow-lab\nRoot-Is-Purelib: true\n"
              "Tag: py3-none-any\n")


def source_tree() -> Path | None:
    """The checkout the running attachflow comes from, or None when it was installed."""
    tree = Path(attachflow.__file__).resolve().parents[1]
    return tree if (tree / "pyproject.toml").exists() else None


def wheel() -> Path:
    """The running attachflow as a wheel, made once per `lab up`, for both nodes."""
    out = layout.path("nodes-wheel")
    with _LOCK:
        found = sorted(out.glob("attachflow-*.whl"))
        if found:
            return found[-1]
        shutil.rmtree(out, ignore_errors=True)
        tree = source_tree()
        if tree is None:
            return pack_installed(installed_distribution(), out)
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
             str(tree)], timeout=300)
        found = sorted(out.glob("attachflow-*.whl"))
        if not found:
            raise LabError(f"pip wheel {tree} made no wheel")
        return found[-1]


def installed_distribution() -> importlib.metadata.Distribution:
    """attachflow's installed distribution, checked to be the files that are running: a
    wheel of another installation would put other code on the nodes."""
    running = Path(attachflow.__file__).resolve()
    hint = "reinstall it (pip install attachflow) or run attachflow from a checkout"
    try:
        dist = importlib.metadata.distribution("attachflow")
    except importlib.metadata.PackageNotFoundError as exc:
        raise LabError(f"kernel nodes install attachflow from a wheel, and the attachflow "
                       f"running from {running.parent} is neither a checkout nor an "
                       f"installed distribution: {hint}") from exc
    listed = Path(str(dist.locate_file("attachflow/__init__.py"))).resolve()
    if not dist.files or listed != running:
        raise LabError(f"kernel nodes install attachflow from a wheel, and the installed "
                       f"distribution {dist.version} does not list the running files "
                       f"({running.parent}): {hint}")
    return dist


def pack_installed(dist: importlib.metadata.Distribution, out: Path) -> Path:
    """A wheel (py3-none-any) of ``dist``'s installed package files and metadata, in
    ``out``; byte-compiled files are left out (the installer makes its own)."""
    package, metadata = [], []
    for file in dist.files or ():
        parts = PurePosixPath(str(file)).parts
        if parts[0].endswith(".dist-info") and len(parts) > 1:
            if parts[-1] not in _INSTALL_ONLY:
                metadata.append((file, "/".join(parts[1:])))
        elif parts[0] == "attachflow" and "__pycache__" not in parts \
                and not parts[-1].endswith(".pyc"):
            package.append(file)
    if not package:
        raise LabError(f"the installed attachflow {dist.version} lists no package files")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    info = f"{name}-{dist.version}.dist-info"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}-{dist.version}-py3-none-any.whl"
    tmp = target.with_suffix(".tmp")
    record: list[str] = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as whl:
        def add(arcname: str, data: bytes) -> None:
            whl.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")

        for file in package:
            add(str(file), Path(str(dist.locate_file(file))).read_bytes())
        for file, inside in metadata:
            add(f"{info}/{inside}", Path(str(dist.locate_file(file))).read_bytes())
        add(f"{info}/WHEEL", WHEEL_FILE.encode())
        whl.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    tmp.replace(target)
    return target
