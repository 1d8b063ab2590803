"""What `eval "$(attachflow lab env)"` leaves in a shell, found by running the lines in
bash (they export variables and source a file), not by parsing them."""

from __future__ import annotations

import os
import subprocess


def _shell_env(script: str, base: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["bash", "-c", script + "\nenv -0\n"], capture_output=True,
                         text=True, check=True, env=base, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def evaluated(lines: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables the lines set or change, on top of ``base`` (default: a bare PATH)."""
    base = {"PATH": os.environ["PATH"]} if base is None else base
    before = _shell_env("", base)
    after = _shell_env("\n".join(lines), base)
    return {k: v for k, v in after.items() if before.get(k) != v and k != "_"}
