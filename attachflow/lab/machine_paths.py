"""Directories the lab creates on the machine outside its state directory.

Side effect owned: those directories. Each is recorded, topmost missing ancestor first,
before it is made, so ``down`` removes exactly what the lab added, and only while empty.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Iterable

from attachflow.lab import layout

_RECORD = "created-dirs.json"
_lock = threading.Lock()


def note_created(paths: Iterable[Path], make: bool = False) -> None:
    """Record which of ``paths`` do not exist yet (with ``make``, create them)."""
    with _lock:
        created = layout.load_json(layout.path(_RECORD), [])
        for p in paths:
            if p.exists():
                continue
            top = p
            while not top.parent.exists():
                top = top.parent
            if make:
                p.mkdir(parents=True)
            if str(top) not in created:
                created.append(str(top))
        layout.write(layout.path(_RECORD), json.dumps(created))


def remove_created() -> list[str]:
    """Remove the recorded directories that are empty; name those that are not."""
    problems = []
    for d in reversed(layout.load_json(layout.path(_RECORD), [])):
        top = Path(d)
        if top.is_dir():
            for sub in sorted(top.rglob("*"), key=lambda x: len(x.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        if top.exists():
            problems.append(f"{top} is not empty; left in place")
    return problems
