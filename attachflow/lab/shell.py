"""Running commands and waiting for things, for the lab's components.

Side effect owned: child processes that run to completion (ip, tgtadm, virsh, ...);
long-running daemons are supervision.py's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

from attachflow.lab.errors import LabError, NeverReady

T = TypeVar("T")


def tail(text: str | bytes | None, n: int = 1) -> str:
    """The last ``n`` non-empty lines of a command's output, joined on one line."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def read_tail(file: Path, size: int = 2000) -> str:
    try:
        with open(file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def run(argv: list[str], *, timeout: float = 120, env: dict | None = None,
        check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=env, input=input,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(argv[:4])}: no answer within {timeout:.0f}s") from exc
    if check and cp.returncode != 0:
        detail = tail(cp.stderr) or tail(cp.stdout)
        raise LabError(f"{shlex.join(argv[:4])} failed (exit {cp.returncode}): {detail}")
    return cp


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 0.2,
             dead: Callable[[], str | None] | None = None) -> T:
    """Poll ``probe`` until it returns something true; ``dead`` names a reason to stop
    early (a daemon that exited). Errors of the probe count as "not yet", except
    NeverReady, which ends the wait."""
    deadline = time.monotonic() + timeout
    last_err = ""
    while True:
        try:
            result = probe()
            if result:
                return result
        except NeverReady:
            raise
        except (LabError, OSError, ValueError) as e:
            last_err = str(e)
        if dead is not None:
            why = dead()
            if why:
                raise LabError(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not ready after {timeout:g}s"
                           + (f" ({last_err})" if last_err else ""))
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def is_mount_point(p: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(p):
            return True
    return False
