"""benchmarks.run's attach figures: attach + detach through the floor, the library and the
command line (with Keystone tokens kept across commands and without), the storage calls
each operation makes, the peers (python-openstackclient), and start-up.

Every command line run here takes ``--timings``, so each sample carries its phases.
"""

from __future__ import annotations

import sys
import time

from benchmarks.common import (add_phases, af, cli, library_phases, median_phases, run,
                               run_measured, stats, summary, timed)
from benchmarks.floor import Floor
from benchmarks.labkit import Lab

NOVA_CALLS_PER_ATTACH = 4  # reserve, get, update, complete (REFERENCE-FLOWS)
HOST = "hosta"
CACHE_OFF = {"ATTACHFLOW_TOKEN_CACHE": "off"}


def cli_attach_detach(volume: str, dom: str, env_extra: dict | None = None
                      ) -> tuple[float, float, dict, dict]:
    """Seconds of `attachflow attach` and of `attachflow detach`, and their phases."""
    where = ["--host", HOST]
    a_wall, a_phases, _ = cli(["attach", volume, dom, *where], env_extra)
    d_wall, d_phases, _ = cli(["detach", volume, dom, *where], env_extra)
    return a_wall, d_wall, a_phases, d_phases


def library_attach_detach(client, volume: str, dom: str) -> tuple[float, dict, dict]:
    """Seconds of one attach + detach through a warm ``attachflow.Client``, and the
    phases of each (the storage calls counted among them)."""
    from attachflow import timings
    timings.reset()
    start = time.perf_counter()
    client.attach(volume, dom, host=HOST)
    mid = time.perf_counter()
    attach = library_phases(mid - start)
    timings.reset()
    client.detach(volume, dom, host=HOST)
    end = time.perf_counter()
    return end - start, attach, library_phases(end - mid)


def attach_detach(lab: Lab, reps: int) -> dict:
    """Floor, library, CLI and CLI without the token cache, interleaved; one untimed
    warm-up of each first (the library's and the floor's logins and connections; the
    CLI's stored token)."""
    import attachflow
    guest = lab.boot(HOST, 128, with_os=True)
    data_af, data_floor = lab.new_volumes(2)
    client = attachflow.Client(transport="native")
    floor = Floor(lab.cinder, lab.conn(HOST), client.connector(HOST).to_dict())
    floor.watch(guest.name)
    floor.attach_detach(data_floor, guest.name)
    library_attach_detach(client, data_af, guest.name)
    cli_attach_detach(data_af, guest.name)
    samples: dict[str, list] = {k: [] for k in (
        "floor", "library", "cli", "cli_attach", "cli_detach", "cli_no_token_cache",
        "cli_phases", "cli_no_cache_phases", "library_phases")}
    for i in range(reps):
        samples["floor"].append(timed(lambda: floor.attach_detach(data_floor, guest.name)))
        seconds, lib_a, lib_d = library_attach_detach(client, data_af, guest.name)
        samples["library"].append(seconds)
        samples["library_phases"].append({"attach": lib_a, "detach": lib_d})
        a, d, pa, pd = cli_attach_detach(data_af, guest.name)
        samples["cli"].append(a + d)
        samples["cli_attach"].append(a)
        samples["cli_detach"].append(d)
        samples["cli_phases"].append({"attach": pa, "detach": pd})
        a, d, pa, pd = cli_attach_detach(data_af, guest.name, CACHE_OFF)
        samples["cli_no_token_cache"].append(a + d)
        samples["cli_no_cache_phases"].append({"attach": pa, "detach": pd})
        print(f"  attach+detach rep {i + 1}: floor {samples['floor'][-1]:.3f} s, library "
              f"{samples['library'][-1]:.3f} s, cli {samples['cli'][-1]:.3f} s, cli without "
              f"token cache {samples['cli_no_token_cache'][-1]:.3f} s", flush=True)
    client.close()
    return attach_detach_result(samples) | {"guest": guest.name, "volume": data_af}


def attach_detach_result(samples: dict) -> dict:
    out = {k: stats(samples[k]) for k in ("floor", "library", "cli", "cli_attach",
                                          "cli_detach", "cli_no_token_cache")}
    out["library_over_floor"] = out["library"]["median"] / out["floor"]["median"]
    out["cli_minus_library_s"] = out["cli"]["median"] - out["library"]["median"]
    out["token_cache_saves_s"] = out["cli_no_token_cache"]["median"] - out["cli"]["median"]
    out["phases"] = {}
    for key in ("cli_phases", "cli_no_cache_phases", "library_phases"):
        reports = samples[key]
        name = key.removesuffix("_phases")
        out["phases"][name] = {
            "attach": median_phases([r["attach"] for r in reports]),
            "detach": median_phases([r["detach"] for r in reports]),
            "attach_detach": median_phases([add_phases(r["attach"], r["detach"])
                                            for r in reports])}
    lib = out["phases"]["library"]
    out["storage_calls"] = {"attach": lib["attach"]["calls"]["storage"],
                            "detach": lib["detach"]["calls"]["storage"],
                            "nova_attach": NOVA_CALLS_PER_ATTACH}
    return out


def openstack_show(volume: str) -> tuple[float, float]:
    """Wall time of `openstack volume show`, and the seconds its own --timing gives the
    requests to Keystone."""
    start = time.perf_counter()
    proc = run(["openstack", "--timing", "volume", "show", volume, "-f", "value", "-c",
                "status"])
    wall = time.perf_counter() - start
    keystone = 0.0
    for line in proc.stdout.splitlines():
        url, _, seconds = line.rpartition(",")
        if ":5000" in url:  # the lab's Keystone
            keystone += float(seconds)
    return wall, keystone


def peers(lab: Lab, reps: int, guest: str, volume: str) -> dict:
    """`openstack volume show` against `attachflow list --host` and one `attachflow
    attach` (its detach untimed), interleaved."""
    samples: dict[str, list] = {k: [] for k in (
        "openstack_volume_show", "openstack_keystone_s", "attachflow_list",
        "attachflow_attach", "list_phases", "attach_phases")}
    for i in range(reps):
        wall, keystone = openstack_show(volume)
        samples["openstack_volume_show"].append(wall)
        samples["openstack_keystone_s"].append(keystone)
        # exit 1: list found a disagreement somewhere on the host (not timed apart)
        wall, found, _ = cli(["list", "--host", HOST, "-f", "value"], ok=(0, 1))
        samples["attachflow_list"].append(wall)
        samples["list_phases"].append(found)
        wall, found, _ = cli(["attach", volume, guest, "--host", HOST])
        samples["attachflow_attach"].append(wall)
        samples["attach_phases"].append(found)
        run(af("detach", volume, guest, "--host", HOST))
        print(f"  peers rep {i + 1}: openstack volume show "
              f"{samples['openstack_volume_show'][-1]:.3f} s, attachflow list "
              f"{samples['attachflow_list'][-1]:.3f} s, attachflow attach "
              f"{samples['attachflow_attach'][-1]:.3f} s", flush=True)
    return peers_result(samples)


def peers_result(samples: dict[str, list]) -> dict:
    out = {k: stats(samples[k]) for k in ("openstack_volume_show", "openstack_keystone_s",
                                          "attachflow_list", "attachflow_attach")}
    out["phases"] = {"list": median_phases(samples["list_phases"]),
                     "attach": median_phases(samples["attach_phases"])}
    return out


def startup(pairs: int) -> dict:
    base, helps, rss = [], [], []
    for _ in range(pairs):
        base.append(run_measured([sys.executable, "-c", "pass"])[0])
        seconds, _out, _err, peak = run_measured(af("--help"))
        helps.append(seconds)
        if peak is not None:
            rss.append(peak)
    out = {"python_c_pass": stats(base), "attachflow_help": stats(helps),
           "attachflow_help_rss_mib": summary(rss)}
    out["help_minus_python_s"] = (out["attachflow_help"]["median"]
                                  - out["python_c_pass"]["median"])
    return out
