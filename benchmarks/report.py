"""benchmarks.run's results.md and its plots, from the results document."""

from __future__ import annotations

from pathlib import Path

from benchmarks import plots
from benchmarks.common import KINDS, fmt, ratio

PHASE_COLUMNS = (*KINDS, "other", "exit")


def target_met(value: float, target: float, unit: str = "x") -> str:
    """``yes``, or by how much ``value`` misses ``target`` (``unit``: x, s, MiB)."""
    if value <= target:
        return "yes"
    return f"**no**, by {value - target:.2f}{'' if unit == 'x' else ' '}{unit}"


def header(res: dict) -> list[str]:
    m = res["machine"]
    mode = " **Smoke run** (one repetition, smallest shapes): not figures to quote." \
        if res.get("smoke") else ""
    return [
        "# attachflow benchmarks", "",
        f"{res['date']}. Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}, {m['libvirt']}, {m['qemu']}, guests "
        f"under {m['accel']}. Lab: real Keystone and Cinder (which caches a validated "
        f"token for {res['lab']['cinder_token_cache_time']} s), tgtd, libvirtd over "
        f"qemu+ssh, QEMU's own iSCSI initiator with CHAP. Commands run as "
        f"`{res.get('attachflow_command', 'attachflow')}` (the console script, no version "
        f"manager's shim). {res['reps']} interleaved repetitions; median (min - max).{mode}",
        ""]


def figures(res: dict) -> list[str]:
    ad, st, pe = res["attach_detach"], res["startup"], res["peers"]
    rows = ["## Each figure against its baseline", "",
            "| figure | attachflow | baseline | ratio / difference | target | met |",
            "|---|---|---|---|---|---|",
            f"| attach + detach, library | {fmt(ad['library'])} | floor {fmt(ad['floor'])} "
            f"| {ad['library_over_floor']:.2f}x | | |",
            f"| attach + detach, CLI | {fmt(ad['cli'])} | library {fmt(ad['library'])} | "
            f"{ad['cli_minus_library_s']:+.3f} s | <= +0.3 s | "
            f"{target_met(ad['cli_minus_library_s'], 0.3, 's')} |",
            f"| attach + detach, CLI without the token cache | "
            f"{fmt(ad['cli_no_token_cache'])} | CLI with it {fmt(ad['cli'])} | "
            f"{ad['token_cache_saves_s']:+.3f} s | | |"]
    sc = ad["storage_calls"]
    rows.append(f"| storage calls per attach / detach | {sc['attach']:g} / {sc['detach']:g} "
                f"| Nova {sc['nova_attach']} per attach | | | |")
    for key in sorted(res["migration"], key=int):
        rows += migration_rows(res["migration"][key])
    rows += peer_rows(pe)
    rows += scale_rows(res["scale"])
    mv = res["movers"]
    rows.append(f"| {mv['guests']} migrations at once | {fmt(mv['concurrent_s'], digits=1)} | "
                f"one after another {fmt(mv['sequential_s'], digits=1)} | "
                f"{mv['speedup']:.2f}x faster | | |")
    rows.append(f"| `attachflow --help` | {fmt(st['attachflow_help'])} | `python3 -c pass` "
                f"{fmt(st['python_c_pass'])} | {st['help_minus_python_s']:+.3f} s | "
                f"<= +0.2 s | {target_met(st['help_minus_python_s'], 0.2, 's')} |")
    return rows + ["", "![each operation against its baseline](versus.png)", ""]


def peer_rows(pe: dict) -> list[str]:
    show = pe["openstack_volume_show"]
    listed = ratio(pe["attachflow_list"], show)
    return [f"| `attachflow list --host hosta -f value` | {fmt(pe['attachflow_list'])} | "
            f"`openstack volume show` {fmt(show)} | {listed:.2f}x | <= 1x | "
            f"{target_met(listed, 1.0)} |",
            f"| `attachflow attach` | {fmt(pe['attachflow_attach'])} | `openstack volume "
            f"show` {fmt(show)} | {ratio(pe['attachflow_attach'], show):.2f}x | | |"]


def migration_rows(mg: dict) -> list[str]:
    n = mg["volumes"]
    what = f"live migration, {n} volume{'s' if n > 1 else ''} ({mg['memory_mib']} MiB)"
    target = mg["target_ratio"]
    return [
        f"| {what}, total | {fmt(mg['attachflow'], digits=2)} | virsh "
        f"{fmt(mg['raw'], digits=2)} | {mg['total_ratio']:.2f}x ({mg['extra_s']:+.2f} s) | "
        + (f"<= {target:.2f}x | {target_met(mg['total_ratio'], target)} |" if target
           else "| |"),
        f"| {what}, downtime | {fmt(mg['attachflow_downtime_ms'], 'ms', digits=0)} | virsh "
        f"{fmt(mg['raw_downtime_ms'], 'ms', digits=0)} | {mg['downtime_ratio']:.2f}x | "
        f"no worse | {target_met(mg['downtime_ratio'], 1.0)} |",
        f"| {what}, storage calls per volume | {mg['storage_calls_per_volume']:g} | | | | |",
        rss_row(f"{what}, orchestrator peak RSS", mg["attachflow_peak_rss_mib"])]


def rss_row(what: str, rss: dict) -> str:
    if not rss["n"]:
        return f"| {what} | not measured (no /usr/bin/time) | | | <= 100 MiB | |"
    return (f"| {what} | {fmt(rss, 'MiB', digits=0)} | | | <= 100 MiB | "
            f"{target_met(rss['median'], 100, 'MiB')} |")


def scale_rows(sc: dict) -> list[str]:
    rows = []
    for n in sc["widths"]:
        p = sc[f"parallel_{n}"]
        af, fl = p["attachflow"], p["floor"]
        target = sc["target_ratio_at_16"] if n == 16 else None
        rows.append(
            f"| {n} attach{'es' if n > 1 else ''} at once (CLI), wall | "
            f"{fmt(af['wall_s'], digits=2)}; p95 {af['latency']['p95']:.2f} s; "
            f"{af['throughput_per_s']:.2f}/s | floor {fmt(fl['wall_s'], digits=2)}; p95 "
            f"{fl['latency']['p95']:.2f} s; {fl['throughput_per_s']:.2f}/s | "
            f"{p['ratio']:.2f}x (p95 {p['p95_ratio']:.2f}x) | "
            + (f"<= {target}x | {target_met(p['ratio'], target)} |" if target else "| |"))
    return rows


def keystone_rows(res: dict) -> list[str]:
    ad, pe = res["attach_detach"], res["peers"]
    ph = ad["phases"]
    rows = ["## Keystone's share", "",
            "Keystone's seconds are the `keystone` phases of `--timings` (logins, stored "
            "tokens, catalog reads); Cinder's own validation of a token it has not seen is "
            "inside the `storage` phase, which is why the CLI without the token cache "
            "pays more there too.", "",
            "| figure | whole (median) | Keystone | share |", "|---|---|---|---|"]

    def row(label: str, wall: float, keystone: float) -> str:
        share = keystone / wall if wall else 0.0
        return f"| {label} | {wall:.3f} s | {keystone:.3f} s | {share:.0%} |"

    rows.append(row("CLI attach + detach, tokens kept", ad["cli"]["median"],
                    ph["cli"]["attach_detach"]["keystone"]))
    rows.append(row("CLI attach + detach, token cache off", ad["cli_no_token_cache"]["median"],
                    ph["cli_no_cache"]["attach_detach"]["keystone"]))
    rows.append(row("library attach + detach (warm client)", ad["library"]["median"],
                    ph["library"]["attach_detach"]["keystone"]))
    for key in sorted(res["migration"], key=int):
        mg = res["migration"][key]
        rows.append(row(f"`attachflow migrate`, {key} volume(s)", mg["attachflow"]["median"],
                        mg["phases"]["keystone"]))
    rows.append(row("`attachflow list`", pe["attachflow_list"]["median"],
                    pe["phases"]["list"]["keystone"]))
    rows.append(row("`openstack volume show` (its --timing)",
                    pe["openstack_volume_show"]["median"],
                    pe["openstack_keystone_s"]["median"]))
    widest = res["scale"]["widths"][-1]
    p = res["scale"][f"parallel_{widest}"]["attachflow"]
    rows.append(row(f"one of {widest} CLI attaches at once", p["latency"]["median"],
                    p["phases"]["keystone"]))
    return rows + [""]


def breakdown_bars(res: dict) -> list[tuple[str, dict]]:
    ph = res["attach_detach"]["phases"]
    bars = [("CLI attach", ph["cli"]["attach"]), ("CLI detach", ph["cli"]["detach"]),
            ("CLI attach, token cache off", ph["cli_no_cache"]["attach"]),
            ("library attach", ph["library"]["attach"]),
            ("library detach", ph["library"]["detach"])]
    for key in sorted(res["migration"], key=int):
        bars.append((f"CLI migrate, {key} volume(s)", res["migration"][key]["phases"]))
    widest = res["scale"]["widths"][-1]
    bars.append((f"CLI attach, {widest} at once",
                 res["scale"][f"parallel_{widest}"]["attachflow"]["phases"]))
    return bars


def phase_rows(res: dict) -> list[str]:
    rows = ["## Where the time goes, per phase", "",
            "Medians per phase of `--timings` (the library's: the same record, read in "
            "process); `other` is the command's total less its phases (attachflow's own "
            "work, the journal, locks and waits; negative where calls overlapped), `exit` "
            "the wall time after the report.", "",
            "| command | " + " | ".join(PHASE_COLUMNS) + " | total | storage calls |",
            "|---|" + "---|" * (len(PHASE_COLUMNS) + 2)]
    for label, rep in breakdown_bars(res):
        cells = " | ".join(f"{rep.get(k, 0.0):.3f}" for k in PHASE_COLUMNS)
        rows.append(f"| {label} | {cells} | {rep['total'] + rep.get('exit', 0):.3f} | "
                    f"{rep['calls']['storage']:g} |")
    return rows + ["", "![per-phase breakdown](phases.png)", ""]


def markdown(res: dict, out: Path) -> str:
    lines = header(res) + figures(res) + keystone_rows(res) + phase_rows(res)
    lines += ["## Parallel attaches", "",
              "![throughput against parallelism](throughput.png)", ""]
    if (out / "kernel-attach.md").exists():
        lines += ["The kernel transport on the compute-node VMs: "
                  "[kernel-attach.md](kernel-attach.md).", ""]
    return "\n".join(lines)


def draw(res: dict, out: Path) -> None:
    ad, pe, st = res["attach_detach"], res["peers"], res["startup"]
    panels = [("attach + detach", [("floor", ad["floor"]["samples"]),
                                   ("library", ad["library"]["samples"]),
                                   ("CLI", ad["cli"]["samples"]),
                                   ("CLI, no\ntoken cache",
                                    ad["cli_no_token_cache"]["samples"])])]
    for key in sorted(res["migration"], key=int):
        mg = res["migration"][key]
        panels.append((f"live migration, {key} volume(s)",
                       [("virsh", mg["raw"]["samples"]),
                        ("attachflow", mg["attachflow"]["samples"])]))
    panels.append(("peers", [("openstack\nvolume show", pe["openstack_volume_show"]["samples"]),
                             ("attachflow\nlist", pe["attachflow_list"]["samples"]),
                             ("attachflow\nattach", pe["attachflow_attach"]["samples"])]))
    widest = res["scale"]["widths"][-1]
    p = res["scale"][f"parallel_{widest}"]
    panels.append((f"{widest} attaches at once (wall)",
                   [("floor", p["floor"]["wall_s"]["samples"]),
                    ("attachflow CLI", p["attachflow"]["wall_s"]["samples"])]))
    panels.append(("start-up", [("python3 -c pass", st["python_c_pass"]["samples"]),
                                ("attachflow --help", st["attachflow_help"]["samples"])]))
    plots.versus(panels, out / "versus.png")
    plots.breakdown(breakdown_bars(res), out / "phases.png",
                    "Where one command's time goes (native transport, hosta/hostb)")
    sc = res["scale"]
    series = {who: ([sc[f"parallel_{n}"][who]["throughput_per_s"] for n in sc["widths"]],
                    [sc[f"parallel_{n}"][who]["latency"]["p95"] for n in sc["widths"]])
              for who in ("attachflow", "floor")}
    plots.throughput(sc["widths"], series, out / "throughput.png")
