"""The kernel benchmark's command works (`python3 -m benchmarks.kernel_attach --smoke`),
run where its compute-node VMs are up: one repetition of attachflow against the floor,
results and plots written. No time is asserted: the figures are the benchmark's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.kernel]
ROOT = Path(__file__).resolve().parents[2]


def test_the_kernel_benchmark_smoke_writes_its_results(lab, tmp_path):
    lab.manager.up(echo=lambda line: print(line, flush=True), kernel_nodes=True)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernel_attach", "--smoke",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "kernel-attach.json").read_text())
    for side in ("attachflow", "floor"):
        assert res["seconds"][side]["n"] == 1 and res["seconds"][side]["median"] > 0
    assert res["phases"], "the per-phase breakdown of one kernel attach"
    for name in ("kernel-attach.md", "kernel-attach.png", "kernel-attach-phases.png"):
        assert (tmp_path / name).stat().st_size > 0, name
