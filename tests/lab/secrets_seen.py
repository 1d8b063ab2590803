"""Every secret the session's labs used (CHAP passwords of the targets Cinder made,
Keystone passwords), gathered after each lab test, and every output of the attachflow
command the tests ran: test_secrets_left searches what the suite leaves for them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

SECRETS: set[str] = set()
OUTPUTS: list[str] = []


def gather(state: Path) -> None:
    found = set()
    for conf in (state / "cinder" / "volumes").glob("*"):
        with contextlib.suppress(OSError):
            for line in conf.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "incominguser":
                    found.add(parts[2])
    with contextlib.suppress(OSError, ValueError):
        found.update(json.loads((state / "keystone" / "passwords.json").read_text()).values())
    SECRETS.update(s for s in found if len(s) >= 8)
