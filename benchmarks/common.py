"""What every benchmark shares: the lab's environment, running and timing a command,
its ``--timings`` breakdown, summaries of samples, the machine, and writing results.

Nothing here talks to the lab's services itself; the one side effect is running
commands (and ``bash`` for ``attachflow lab env``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

RESULTS = Path(__file__).resolve().parent / "results"

# The phases `attachflow --timings` reports, in its order (attachflow.timings.KINDS);
# "other" is the command's total less their sum, "exit" the wall time after the report.
KINDS = ("start-up", "configuration", "keystone", "negotiation", "connection", "storage",
         "libvirt", "host-call")
_PHASE_LINE = re.compile(r"^\s+(\d+\.\d+)\s{2}(\S+)\s+(.*)$")
_TOTAL_LINE = re.compile(r"command total (\d+\.\d+)")


# -- samples ----------------------------------------------------------------------------
def summary(samples: list[float]) -> dict:
    """Median, min, max and p95 (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "p95": 0.0, "n": 0}
    p95 = ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered))) - 1))]
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p95": p95, "n": len(ordered)}


def stats(samples: list[float]) -> dict:
    """A summary with its samples (the plots draw them)."""
    return {**summary(samples), "samples": list(samples)}


def ratio(a: dict, b: dict) -> float:
    """Median over median, of two summaries."""
    return a["median"] / b["median"] if b["median"] else float("inf")


def fmt(s: dict, unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    """``median unit (min - max)`` of a summary."""
    return (f"{s['median'] * scale:.{digits}f} {unit} ({s['min'] * scale:.{digits}f} - "
            f"{s['max'] * scale:.{digits}f})")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- commands ---------------------------------------------------------------------------
def af(*args: str) -> list[str]:
    """argv of an attachflow command, through the console script pip installed beside
    this interpreter (as an installed attachflow runs; a version manager's shim on PATH,
    pyenv's for one, would add its own start-up to every sample), else PATH's."""
    beside = Path(sys.executable).parent / "attachflow"
    return [str(beside) if beside.exists() else "attachflow", *args]


def run(argv: list[str], ok: tuple[int, ...] = (0,), **kw) -> subprocess.CompletedProcess:
    """Run ``argv``, output captured; an exit status not in ``ok`` raises with the end
    of its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode not in ok:
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-600:]}")
    return proc


GNU_TIME = Path("/usr/bin/time")


def run_measured(argv: list[str], env: Mapping[str, str] | None = None
                 ) -> tuple[float, str, str, float | None]:
    """Wall time, stdout, stderr and peak RSS (MiB) of one command. The RSS comes from
    GNU time (Debian's ``time``) run between: a child forked from this large process
    would report this process's size as its own peak (Linux keeps the pre-exec peak);
    None without it."""
    with tempfile.NamedTemporaryFile("w+") as rss:
        wrapped = ([str(GNU_TIME), "-f", "%M", "-o", rss.name, *argv]
                   if GNU_TIME.exists() else argv)
        start = time.perf_counter()
        proc = subprocess.run(wrapped, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr[-600:]}")
        kib = rss.read().strip().splitlines()
    peak = int(kib[-1]) / 1024 if kib and kib[-1].isdigit() else None
    return seconds, proc.stdout, proc.stderr, peak


def cli(argv: list[str], env_extra: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> tuple[float, dict, str]:
    """Wall time, phases (its --timings report) and stdout of one attachflow command."""
    env = {**os.environ, **(env_extra or {})}
    start = time.perf_counter()
    proc = run(af(*argv, "--timings"), env=env, ok=ok)
    wall = time.perf_counter() - start
    return wall, phases(proc.stderr, wall), proc.stdout


# -- --timings --------------------------------------------------------------------------
def phases(stderr: str, wall: float | None = None) -> dict:
    """The per-kind sums of one command's ``--timings`` report (see ``tally``)."""
    entries: list[tuple[str, float, str]] = []
    total = None
    for line in stderr.splitlines():
        found = _TOTAL_LINE.search(line)
        if found:
            total = float(found.group(1))
            continue
        match = _PHASE_LINE.match(line)
        if match and match.group(2) in KINDS:
            entries.append((match.group(2), float(match.group(1)), match.group(3)))
    if total is None:
        raise ValueError("no --timings report in the command's stderr")
    return tally(entries, total, wall)


def library_phases(wall: float) -> dict:
    """The phases attachflow recorded in this process since ``attachflow.timings.reset``
    (a library call's), against the call's ``wall`` time."""
    from attachflow.timings import taken
    return tally([(t.kind, t.seconds, t.what) for t in taken()], wall, wall)


def tally(entries: list[tuple[str, float, str]], total: float, wall: float | None,
          longest: int = 4) -> dict:
    """Per kind, the seconds and the number of calls (``calls``) of ``entries`` (kind,
    seconds, what); ``other`` is ``total`` less their sum (attachflow's own work and
    waits; negative where calls overlapped), ``exit`` what came after the command's
    report (given the measured ``wall`` time), ``longest`` the longest entries."""
    sums = dict.fromkeys(KINDS, 0.0)
    calls = dict.fromkeys(KINDS, 0)
    for kind, seconds, _what in entries:
        sums[kind] += seconds
        calls[kind] += 1
    out = {**sums, "other": total - sum(sums.values()), "total": total, "calls": calls,
           "longest": [list(e) for e in sorted(entries, key=lambda e: -e[1])[:longest]]}
    out["exit"] = max(0.0, wall - total) if wall is not None else 0.0
    return out


def add_phases(*reports: dict) -> dict:
    """The phases of several commands that ran one after another, added up."""
    out = {k: sum(r.get(k, 0.0) for r in reports) for k in (*KINDS, "other", "total",
                                                               "exit")}
    out["calls"] = {k: sum(r["calls"][k] for r in reports) for k in KINDS}
    out["longest"] = sorted((e for r in reports for e in r["longest"]),
                            key=lambda e: -e[1])[:len(reports[0]["longest"])]
    return out


def median_phases(reports: list[dict]) -> dict:
    """Per kind, the median over the repetitions' reports (what the tables and the
    stacked bars show)."""
    keys = (*KINDS, "other", "total", "exit")
    out = {k: statistics.median(r.get(k, 0.0) for r in reports) for k in keys}
    out["calls"] = {k: statistics.median(r["calls"][k] for r in reports) for k in KINDS}
    middle = sorted(reports, key=lambda r: r["total"])[len(reports) // 2]
    out["longest"] = middle["longest"]  # of the run whose total is the median
    out["n"] = len(reports)
    return out


# -- the lab ----------------------------------------------------------------------------
def lab_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``eval "$(attachflow lab env)"`` leaves, found by running the lines
    in bash (they unset, export with "$PATH" and define a function), started with
    ``base`` (default: this process's environment)."""
    import attachflow.lab as lab
    base = dict(os.environ if base is None else base)
    out = run(["bash", "-c", "\n".join(lab.env_lines()) + "\nenv -0\n"], env=base,
              timeout=60).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for name in ("PWD", "OLDPWD", "SHLVL", "_"):
        if name not in base:
            env.pop(name, None)
    return env


def use_lab_env() -> dict[str, str]:
    """Point this process (and every command it runs) at the lab; returns the env."""
    env = lab_env()
    os.environ.clear()
    os.environ.update(env)
    return env


def arguments(doc: str, reps: int, smoke: str) -> argparse.ArgumentParser:
    """The options every benchmark command takes: --reps, --smoke (what it does is
    ``smoke``) and --out; the description is the docstring's first paragraph."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--reps", type=int, default=reps,
                        help=f"repetitions (default {reps})")
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--out", help="results directory (default: benchmarks/results; "
                        "a temporary one for --smoke)")
    return parser


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"{what}: the lab needs root")


# -- reporting --------------------------------------------------------------------------
def machine() -> dict:
    def first(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except Exception:
            return "?"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "libvirt": first(["libvirtd", "--version"]),
            "qemu": first(["qemu-system-x86_64", "--version"]),
            "accel": "TCG (software emulation)"}


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def out_dir(given: str | None, smoke: bool) -> Path:
    """--out, else the results directory, or a fresh temporary one for a smoke run (so
    that a smoke never overwrites the committed figures)."""
    if given:
        return Path(given)
    return Path(tempfile.mkdtemp(prefix="attachflow-bench-")) if smoke else RESULTS


def write_results(out: Path, name: str, res: dict, md: str) -> None:
    """DIR/NAME.json and DIR/NAME.md, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"results: {out / name}.json, {out / name}.md", flush=True)
