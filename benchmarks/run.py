"""attachflow's benchmarks on the local lab, each against its baseline in the same run.

    python3 -m benchmarks.run [--reps N] [--out DIR]   # as root; brings the lab up
    python3 -m benchmarks.run --smoke [--out DIR]      # every path once, smallest shapes

1. attach + detach: a floor script that makes only the necessary calls (attachment
   create with the connector, libvirt secret, attachDeviceFlags, complete; and the
   reverse) in one warm process, against attachflow as a library (a warm
   ``attachflow.Client``) and as a CLI, with Keystone tokens kept across commands and
   with that cache off (``ATTACHFLOW_TOKEN_CACHE=off``); the storage calls of each
2. peers: ``openstack volume show`` (python-openstackclient, the same clouds.yaml)
   against ``attachflow list --host hosta -f value`` and one ``attachflow attach``
3. live migration of a guest with one volume and with four (root and three data
   volumes): ``attachflow migrate`` against a raw ``virsh migrate --live --p2p
   --persistent --undefinesource`` of a twin of the same shape, there and back in turn;
   downtime, storage calls per volume, the orchestrator's peak RSS
4. scale: 1, 4 and 16 attaches at once through the CLI against the floor at the same
   parallelism (ratio, p95 latency, throughput); 4 migrations one after another and
   at once
5. ``attachflow --help`` against ``python3 -c pass``

Every CLI sample runs with ``--timings``: the results give each figure's phases
(Keystone's share among them). Medians with min, max and p95; a figure's runs and its
baseline's are interleaved; nothing asserts a time. Results: DIR/results.json,
DIR/results.md and the plots (versus.png, phases.png, throughput.png) beside them.
``--smoke``: one repetition, 1 and 2 attaches at once, the one-volume migration only, 2
migrating guests, written to a temporary directory unless --out is given.
"""

from __future__ import annotations

import configparser
import dataclasses
import sys
import time

from benchmarks import attaching, migrating, report, scaling
from benchmarks.common import (af, arguments, machine, now, out_dir, require_root,
                               write_results)
from benchmarks.labkit import Lab
from benchmarks.plots import pyplot


@dataclasses.dataclass(frozen=True)
class Shapes:
    """How much of each benchmark a run does."""
    reps: int
    startup_pairs: int
    widths: tuple[int, ...]
    migration_volumes: tuple[int, ...]
    movers: int
    mover_reps: int

    @classmethod
    def full(cls, reps: int) -> "Shapes":
        return cls(reps, max(10, 2 * reps), (1, 4, 16), (1, 4), 4, min(reps, 3))

    @classmethod
    def smoke(cls) -> "Shapes":
        return cls(1, 2, (1, 2), (1,), 2, 1)


def cinder_token_cache_time(lab: Lab) -> str:
    """How long the lab's Cinder trusts a token it validated (keystonemiddleware's
    ``token_cache_time``), as its cinder.conf says."""
    conf = configparser.ConfigParser(interpolation=None, strict=False)
    conf.read(lab.manager.state_dir() / "cinder" / "cinder.conf")
    return conf.get("keystone_authtoken", "token_cache_time", fallback="?")


def measure(lab: Lab, shapes: Shapes) -> dict:
    res: dict = {}
    print("start-up", flush=True)
    res["startup"] = attaching.startup(shapes.startup_pairs)
    print("attach + detach", flush=True)
    res["attach_detach"] = attaching.attach_detach(lab, shapes.reps)
    print("peers", flush=True)
    ad = res["attach_detach"]
    res["peers"] = attaching.peers(lab, shapes.reps, ad.pop("guest"), ad.pop("volume"))
    res["migration"] = {}
    for volumes in shapes.migration_volumes:
        print(f"live migration, {volumes} volume(s)", flush=True)
        res["migration"][str(volumes)] = migrating.migration(lab, shapes.reps, volumes)
    print("attaches at once", flush=True)
    res["scale"] = scaling.scale(lab, shapes.widths, shapes.reps)
    print("migrations at once", flush=True)
    res["movers"] = migrating.movers(lab, shapes.movers, shapes.mover_reps)
    return res


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, 5, "one repetition of every path, smallest shapes"
                     ).parse_args(argv)
    require_root("benchmarks")
    pyplot()  # fails now, not after the measurements, when matplotlib is missing
    shapes = Shapes.smoke() if args.smoke else Shapes.full(max(1, args.reps))
    out = out_dir(args.out, args.smoke)
    started = time.monotonic()
    lab = Lab()
    res = {"reps": shapes.reps, "smoke": args.smoke, "shapes": dataclasses.asdict(shapes),
           "machine": machine(), "date": now(),
           "lab": {"cinder_token_cache_time": cinder_token_cache_time(lab)},
           "attachflow_command": af()[0]}
    try:
        res.update(measure(lab, shapes))
    finally:
        print("cleanup", flush=True)
        lab.cleanup()
    res["run_seconds"] = round(time.monotonic() - started, 1)
    report.draw(res, out)
    write_results(out, "results", res, report.markdown(res, out))
    print(f"benchmarks.run took {res['run_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
