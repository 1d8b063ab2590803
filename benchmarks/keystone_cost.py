"""What Keystone costs each attachflow command on the lab: the logins, against the rest.

    python3 -m benchmarks.keystone_cost [--reps N] [--out DIR]   # as root, lab up

Side by side in one run, interleaved: a fresh storage session's logins (the member's
token alone, and the member's plus the service user's, as every command does) against one
Cinder request made with tokens already in hand (what a command does after its logins),
and the whole `attachflow list --host hosta` command. Also Keystone's memory (its cgroup
and its processes' RSS). Results go to DIR/keystone-cost.json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.run import machine, summary, write_results


def _lab_env() -> dict[str, str]:
    import attachflow.lab as lab
    script = "\n".join(lab.env_lines()) + "\nenv -0\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _memory() -> dict[str, float]:
    from attachflow.lab.cgroup import Cgroup
    group = Cgroup().group("keystone")
    rss = 0
    for pid in (group / "cgroup.procs").read_text().split():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return {"rss_mib": rss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    env = _lab_env()
    if "OS_CLOUD" not in env:
        print("keystone_cost: the lab runs without Keystone", file=sys.stderr)
        return 2
    from attachflow.identity import open_session
    user_only = {k: v for k, v in env.items() if k != "ATTACHFLOW_SERVICE_CLOUD"}
    warm = open_session(env=env)
    warm.log_in()
    volumes_url = None

    def one_request():
        nonlocal volumes_url
        if volumes_url is None:
            volumes_url = warm.session.get_endpoint(service_type="volumev3",
                                                    interface="public") + "/volumes"
        warm.session.get(volumes_url)

    samples: dict[str, list[float]] = {"login_user": [], "login_user_and_service": [],
                                       "one_cinder_request": [],
                                       "one_cinder_request_validated_already": [],
                                       "cli_list": []}
    cli = ["attachflow", "list", "--host", "hosta", "-f", "value"]
    for rep in range(args.reps):
        samples["login_user"].append(_timed(lambda: open_session(env=user_only).log_in()))
        samples["login_user_and_service"].append(
            _timed(lambda: open_session(env=env).log_in()))
        # The first request after a pause has Cinder validate both tokens with Keystone;
        # the next one, within the lab's token_cache_time (2 s), does not.
        samples["one_cinder_request"].append(_timed(one_request))
        samples["one_cinder_request_validated_already"].append(_timed(one_request))
        samples["cli_list"].append(_timed(lambda: subprocess.run(
            cli, env=env, capture_output=True, check=True)))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms"
                                              for k, v in samples.items()), flush=True)
    res = {"reps": args.reps, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "seconds": {k: summary(v) for k, v in samples.items()},
           "memory": _memory()}
    s = res["seconds"]

    def ms(key: str) -> str:
        return (f"{s[key]['median'] * 1000:.0f} ms ({s[key]['min'] * 1000:.0f}-"
                f"{s[key]['max'] * 1000:.0f})")
    m = res["machine"]
    lines = [
        "# What Keystone costs each command", "",
        f"{res['date']}; {m.get('cpus')} CPUs, {m.get('kernel', '')}; {args.reps} "
        "interleaved repetitions; median (min-max).", "",
        "| what | time | against one Cinder request with tokens in hand |",
        "|---|---|---|",
    ]
    base = s["one_cinder_request"]["median"]
    for key, label in (("login_user", "the member's login (one token)"),
                       ("login_user_and_service", "the member's and the service user's "
                                                  "logins (every command)"),
                       ("one_cinder_request", "one Cinder request (GET /volumes), "
                                              "Cinder validating both tokens with Keystone"),
                       ("one_cinder_request_validated_already",
                        "the same request again, validations cached by Cinder"),
                       ("cli_list", "`attachflow list --host hosta` (whole command)")):
        lines.append(f"| {label} | {ms(key)} | {s[key]['median'] / base:.1f}x |")
    lines += ["", f"Keystone's memory: {res['memory']['rss_mib']:.0f} MiB RSS in its "
              "processes (gunicorn's master and one worker)."]
    write_results(Path(args.out), "keystone-cost", res, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
