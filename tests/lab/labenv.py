"""What `eval "$(attachflow lab env)"` leaves in a shell, found by running the lines in
bash (they unset and export variables and source a file), not by parsing them."""

from __future__ import annotations

import os
import subprocess

# What bash itself sets in any script's environment.
_SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}


def evaluated(lines: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment after the lines ran in a shell started with ``base``
    (default: a bare PATH)."""
    base = {"PATH": os.environ["PATH"]} if base is None else base
    out = subprocess.run(["bash", "-c", "\n".join(lines) + "\nenv -0\n"],
                         capture_output=True, text=True, check=True, env=base,
                         timeout=30).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k not in _SHELL_OWN or k in base}
