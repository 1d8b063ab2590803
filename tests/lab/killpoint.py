"""``python3 killpoint.py N ARGS...``: run ``attachflow ARGS...`` and kill it (SIGKILL,
sent by the process to itself) the moment its journal has committed step boundary N.

The crash lands exactly at boundary N, never a little later as a watcher's kill may:
nothing after the commit runs (no undo, no final state, no cleanup; the kernel drops
the locks), as when the machine loses the process there. The journal is read afterwards
by the test as any observer reads it."""

from __future__ import annotations

import os
import signal
import sys
import threading

from attachflow.cli import main
from attachflow.journal import OperationLog


def kill_at(boundary: int) -> None:
    written = 0
    counting = threading.Lock()   # a migration finishes its volumes in threads
    write = OperationLog._step

    def step(self, step, state, data=None):
        nonlocal written
        with counting:
            write(self, step, state, data)
            written += 1
            if written == boundary:
                os.kill(os.getpid(), signal.SIGKILL)

    OperationLog._step = step


if __name__ == "__main__":
    kill_at(int(sys.argv[1]))
    sys.argv = ["attachflow", *sys.argv[2:]]
    sys.exit(main())
