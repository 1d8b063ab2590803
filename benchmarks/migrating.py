"""benchmarks.run's migration figures: `attachflow migrate` of a guest with one volume and
with four (the root and three data volumes) against a raw `virsh migrate --live --p2p
--persistent --undefinesource` of a twin of the same shape (same memory, same disks,
QEMU's own iSCSI initiator; the twin's secrets defined on both hosts ahead, so that virsh
moves it with its XML unchanged), each guest moved there and back in turn; downtime,
storage calls per volume and the orchestrator's peak RSS; and several migrations one
after another against the same ones at once.
"""

from __future__ import annotations

import concurrent.futures
import json

from benchmarks.common import (af, median_phases, phases, ratio, run, run_measured, stats,
                               summary, timed)
from benchmarks.labkit import Guest, Lab, other

MEMORY_MIB = 128
TARGETS = {1: 1.15, 4: 1.25}  # issue 24: total time against raw virsh, by volumes


def raw_migrate(lab: Lab, guest: Guest) -> tuple[float, float]:
    """Seconds and downtime (ms, from the destination's completed job) of virsh's own
    migration."""
    import libvirt
    src, dst = guest.host, other(guest.host)
    seconds, _out, _err, _rss = run_measured([
        "virsh", "-c", lab.uri(src), "migrate", "--live", "--p2p", "--persistent",
        "--undefinesource", guest.name, lab.uri(dst)])
    guest.host = dst
    stats_ = lab.conn(dst).lookupByName(guest.name).jobStats(
        libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return seconds, float(stats_.get("downtime", 0))


def attachflow_migrate(guest: Guest) -> tuple[float, float, float, dict]:
    """Seconds, downtime (ms), peak RSS (MiB) and phases of `attachflow migrate`."""
    src, dst = guest.host, other(guest.host)
    seconds, out, err, rss = run_measured(af(
        "migrate", guest.name, "--host", src, "--to", dst, "-f", "json", "--timings"))
    guest.host = dst
    result = json.loads(out)
    return seconds, float(result["downtime_ms"] or 0), rss, phases(err, seconds)


def shape(lab: Lab, volumes: int) -> tuple[Guest, Guest]:
    """A guest for attachflow and its twin for virsh, ``volumes`` disks each."""
    guests = []
    for _ in range(2):
        guests.append(lab.boot("hosta", MEMORY_MIB, with_os=False, data=volumes - 1))
    lab.copy_secrets(guests[1], "hostb")
    return guests[0], guests[1]


def migration(lab: Lab, reps: int, volumes: int) -> dict:
    mine, raw = shape(lab, volumes)
    samples: dict[str, list] = {k: [] for k in (
        "attachflow", "raw", "attachflow_downtime_ms", "raw_downtime_ms",
        "attachflow_peak_rss_mib", "phases")}
    for i in range(reps):
        seconds, downtime = raw_migrate(lab, raw)
        samples["raw"].append(seconds)
        samples["raw_downtime_ms"].append(downtime)
        seconds, downtime, rss, found = attachflow_migrate(mine)
        samples["attachflow"].append(seconds)
        samples["attachflow_downtime_ms"].append(downtime)
        if rss is not None:
            samples["attachflow_peak_rss_mib"].append(rss)
        samples["phases"].append(found)
        print(f"  migration, {volumes} volume(s), rep {i + 1}: raw {samples['raw'][-1]:.2f} "
              f"s ({samples['raw_downtime_ms'][-1]:.0f} ms down), attachflow "
              f"{samples['attachflow'][-1]:.2f} s "
              f"({samples['attachflow_downtime_ms'][-1]:.0f} ms down)", flush=True)
    return migration_result(samples, volumes)


def migration_result(samples: dict[str, list], volumes: int) -> dict:
    out = {k: stats(v) for k, v in samples.items() if k != "phases"}
    out["phases"] = median_phases(samples["phases"])
    out["volumes"] = volumes
    out["memory_mib"] = MEMORY_MIB
    out["target_ratio"] = TARGETS.get(volumes)
    out["total_ratio"] = ratio(out["attachflow"], out["raw"])
    out["extra_s"] = out["attachflow"]["median"] - out["raw"]["median"]
    out["downtime_ratio"] = (out["attachflow_downtime_ms"]["median"]
                             / max(1.0, out["raw_downtime_ms"]["median"]))
    out["storage_calls_per_volume"] = out["phases"]["calls"]["storage"] / volumes
    return out


def movers(lab: Lab, count: int, reps: int) -> dict:
    """``count`` one-volume guests migrated one after another, then the same ones back at
    once, ``reps`` times."""
    guests = lab.boot_many(count, "hosta", 64)

    def move(guest: Guest) -> None:
        run(af("migrate", guest.name, "--host", guest.host, "--to", other(guest.host)))
        guest.host = other(guest.host)

    seq, conc = [], []
    for i in range(reps):
        seq.append(timed(lambda: [move(g) for g in guests]))
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            conc.append(timed(lambda: list(pool.map(move, guests))))
        print(f"  {count} migrations, rep {i + 1}: one after another {seq[-1]:.1f} s, at "
              f"once {conc[-1]:.1f} s", flush=True)
    out = {"guests": count, "sequential_s": summary(seq), "concurrent_s": summary(conc)}
    out["speedup"] = ratio(out["sequential_s"], out["concurrent_s"])
    return out
