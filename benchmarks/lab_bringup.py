"""`attachflow lab up` and `lab down` against a baseline revision of attachflow, or against
the same tree's lab without Keystone, in one run.

    python3 -m benchmarks.lab_bringup --baseline REV [--reps N] [--out DIR]
    python3 -m benchmarks.lab_bringup --baseline-auth noauth [--reps N] [--out DIR]
    python3 -m benchmarks.lab_bringup --baseline REV --smoke   # one cycle each, no warm-up

The baseline revision is checked out in a temporary git worktree and run from there
(`python3 -m attachflow.cli lab up|down` with that tree on PYTHONPATH); the working tree's
code runs the same way. Each revision gets one untimed warm-up cycle (it may install what
it lacks), then the timed cycles alternate which revision goes first. Figures are wall
times of the whole command, median with min and max; results go to
DIR/lab-bringup.json and DIR/lab-bringup.md. Needs root and a machine with no lab up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (arguments, machine, now, out_dir, require_root, summary,
                               write_results)

REPO = Path(__file__).resolve().parents[1]


def timed_command(tree: Path, command: str, *options: str) -> tuple[float, str | None]:
    """Wall time of `lab COMMAND` run from ``tree``, and its error line if it failed."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attachflow.cli", "lab", command, *options],
                          capture_output=True, text=True, env=env, cwd="/")
    took = time.perf_counter() - t0
    return took, (proc.stderr.strip().splitlines() or ["?"])[-1] if proc.returncode else None


def cycle(tree: Path, failures: list[str], *up_options: str) -> tuple[float, float]:
    up, error = timed_command(tree, "up", *up_options)
    if error:
        raise RuntimeError(f"{tree}: lab up failed: {error}")
    down, error = timed_command(tree, "down")
    if error:
        # Counted, then cleaned up so the next cycle starts from nothing.
        failures.append(error)
        _, error = timed_command(tree, "down")
        if error:
            raise RuntimeError(f"{tree}: lab down failed twice: {error}")
    return up, down


def markdown(res: dict) -> str:
    def f(s: dict) -> str:
        return f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f})"
    m = res["machine"]
    lines = [
        f"# Lab bring-up: {res['current']} against {res['baseline']}", "",
        f"{res['date']}; {m.get('cpus')} CPUs, {m.get('kernel', '')}; {res['reps']} "
        "interleaved cycles after one warm-up cycle each; wall time of the command, "
        "median (min-max).", "",
        "| command | this tree | baseline | ratio |", "|---|---|---|---|",
    ]
    fails = res["down_failures"]
    for cmd in ("up", "down"):
        cur, base = res["current_s"][cmd], res["baseline_s"][cmd]
        lines.append(f"| `attachflow lab {cmd}` | {f(cur)} | {f(base)} | "
                     f"{cur['median'] / base['median']:.2f}x |")
    lines.append(f"| `lab down` that failed (then repeated) | {len(fails['current'])} | "
                 f"{len(fails['baseline'])} | |")
    for name, errors in fails.items():
        lines += [f"- {name}: {e}" for e in errors]
    return "\n".join(lines) + "\n"


def compare(trees: dict[str, Path], options: dict[str, tuple[str, ...]], reps: int,
            warm_up: bool) -> tuple[dict, dict]:
    """Samples of up and down per tree, and the downs that failed (then repeated)."""
    failures: dict[str, list[str]] = {n: [] for n in trees}
    if warm_up:
        for name, tree in trees.items():
            print(f"warm-up: {name}", flush=True)
            cycle(tree, [], *options[name])
    samples: dict[str, dict[str, list[float]]] = {n: {"up": [], "down": []} for n in trees}
    for rep in range(reps):
        order = ["baseline", "current"] if rep % 2 == 0 else ["current", "baseline"]
        for name in order:
            up, down = cycle(trees[name], failures[name], *options[name])
            samples[name]["up"].append(up)
            samples[name]["down"].append(down)
            print(f"rep {rep + 1} {name}: up {up:.1f} s, down {down:.1f} s", flush=True)
    return samples, failures


@contextlib.contextmanager
def baseline_tree(rev: str | None):
    """The tree of revision ``rev`` (a temporary git worktree), or this one."""
    if rev is None:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="attachflow-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                        rev], check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(tree)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, 3, "one cycle each, no warm-up cycles")
    parser.add_argument("--baseline", help="git revision to compare with")
    parser.add_argument("--baseline-auth", choices=["noauth", "keystone"],
                        help="compare with this tree's lab brought up with --auth MODE")
    args = parser.parse_args(argv)
    if bool(args.baseline) == bool(args.baseline_auth):
        parser.error("give one of --baseline REV and --baseline-auth MODE")
    require_root("lab_bringup")
    if args.baseline:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                             capture_output=True, text=True, check=True).stdout.strip()
        options: dict[str, tuple[str, ...]] = {"current": (), "baseline": ()}
    else:
        rev = f"this tree with --auth {args.baseline_auth}"
        other = "keystone" if args.baseline_auth == "noauth" else "noauth"
        options = {"current": ("--auth", other), "baseline": ("--auth", args.baseline_auth)}
    reps = 1 if args.smoke else max(1, args.reps)
    with baseline_tree(rev if args.baseline else None) as base_tree:
        samples, failures = compare({"current": REPO, "baseline": base_tree}, options,
                                    reps, warm_up=not args.smoke)
    current = "working tree" + (f" with {' '.join(options['current'])}"
                                if options["current"] else "")
    res = {"baseline": rev, "current": current, "reps": reps, "machine": machine(),
           "date": now(), "down_failures": failures,
           "current_s": {c: summary(v) for c, v in samples["current"].items()},
           "baseline_s": {c: summary(v) for c, v in samples["baseline"].items()}}
    write_results(out_dir(args.out, args.smoke), "lab-bringup" if args.baseline else
                  f"lab-bringup-{options['current'][1]}-vs-{args.baseline_auth}", res,
                  markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
