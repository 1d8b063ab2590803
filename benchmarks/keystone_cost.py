"""What Keystone costs each attachflow command on the lab: the logins, Cinder's validation
of new tokens, against the rest.

    python3 -m benchmarks.keystone_cost [--reps N] [--out DIR]   # as root, lab up
    python3 -m benchmarks.keystone_cost --smoke [--out DIR]

Side by side in one run, interleaved: a fresh storage session's logins (the member's
token alone, and the member's plus the service user's, as a command without stored
tokens does); that session's first Cinder request (Cinder validates both new tokens with
Keystone) and its second (Cinder's token cache answers); and the whole `attachflow list
--host hosta` command with tokens kept across commands and with that cache off. Also
Keystone's memory (its cgroup and its processes' RSS). Results go to
DIR/keystone-cost.json and .md; ``--smoke``: one repetition, into a temporary directory
unless --out is given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks.common import (af, arguments, machine, now, out_dir, require_root, run, stats,
                               timed, use_lab_env, write_results)

LABELS = (
    ("login_user", "the member's login (one token)"),
    ("login_user_and_service", "the member's and the service user's logins (a command "
                               "without stored tokens)"),
    ("first_request_new_tokens", "the first Cinder request (GET /volumes) with those new "
                                 "tokens: Cinder validates both with Keystone"),
    ("request_tokens_validated", "the same request again: Cinder's token cache answers"),
    ("cli_list", "`attachflow list --host hosta` (whole command, tokens kept)"),
    ("cli_list_no_token_cache", "the same with ATTACHFLOW_TOKEN_CACHE=off"),
)


def _memory() -> dict[str, float]:
    from attachflow.lab.cgroup import Cgroup
    group = Cgroup().group("keystone")
    rss = 0
    for pid in (group / "cgroup.procs").read_text().split():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return {"rss_mib": rss / 2**20}


def one_round(env: dict[str, str], samples: dict[str, list[float]]) -> None:
    """One sample of each figure."""
    from attachflow.identity import open_session
    user_only = {k: v for k, v in env.items() if k != "ATTACHFLOW_SERVICE_CLOUD"}
    samples["login_user"].append(timed(lambda: open_session(env=user_only).log_in()))
    fresh = open_session(env=env)  # no token cache: new logins
    samples["login_user_and_service"].append(timed(fresh.log_in))
    url = fresh.session.get_endpoint(service_type="volumev3",
                                     interface="public") + "/volumes"
    samples["first_request_new_tokens"].append(timed(lambda: fresh.session.get(url)))
    samples["request_tokens_validated"].append(timed(lambda: fresh.session.get(url)))
    cli = af("list", "--host", "hosta", "-f", "value")
    ok = (0, 1)  # 1: list found a disagreement on the host; the time counts the same
    samples["cli_list"].append(timed(lambda: run(cli, ok=ok)))
    samples["cli_list_no_token_cache"].append(timed(lambda: run(
        cli, ok=ok, env={**os.environ, "ATTACHFLOW_TOKEN_CACHE": "off"})))


def markdown(res: dict) -> str:
    s, m = res["seconds"], res["machine"]

    def ms(key: str) -> str:
        return (f"{s[key]['median'] * 1000:.0f} ms ({s[key]['min'] * 1000:.0f} - "
                f"{s[key]['max'] * 1000:.0f})")
    lines = [
        "# What Keystone costs each command", "",
        f"{res['date']}; {m.get('cpus')} CPUs, {m.get('kernel', '')}; {res['reps']} "
        "interleaved repetitions; median (min - max).", "",
        "| what | time | against one Cinder request with validated tokens |",
        "|---|---|---|",
    ]
    base = s["request_tokens_validated"]["median"]
    for key, label in LABELS:
        lines.append(f"| {label} | {ms(key)} | {s[key]['median'] / base:.1f}x |")
    lines += ["", f"Keystone's memory: {res['memory']['rss_mib']:.0f} MiB RSS in its "
              "processes (gunicorn's master and one worker)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, 15, "one repetition").parse_args(argv)
    require_root("keystone_cost")
    env = use_lab_env()
    if "OS_CLOUD" not in env:
        print("keystone_cost: the lab runs without Keystone", file=sys.stderr)
        return 2
    reps = 1 if args.smoke else max(1, args.reps)
    samples: dict[str, list[float]] = {key: [] for key, _label in LABELS}
    for rep in range(reps):
        one_round(env, samples)
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms"
                                              for k, v in samples.items()), flush=True)
    res = {"reps": reps, "machine": machine(), "date": now(),
           "seconds": {k: stats(v) for k, v in samples.items()}, "memory": _memory()}
    write_results(out_dir(args.out, args.smoke), "keystone-cost", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
