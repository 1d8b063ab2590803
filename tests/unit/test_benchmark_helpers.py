"""The benchmarks' pure parts, without the lab: reading a --timings report, the lab's
environment as a shell leaves it, summaries, the results document turned into
results.md (and the plots, where matplotlib is installed), and every benchmark command's
argument parsing. No time is asserted."""

from __future__ import annotations

import importlib
import random

import pytest

from benchmarks import attaching, common, migrating, report, run, scaling

REPORT = """\
attachflow: something on stdout's neighbour
timings (seconds):
     0.150  start-up      interpreter, imports, option parsing
     0.002  configuration hosts file
     0.080  keystone      login of user 'lab-member' in project 'p' (cloud 'c')
     0.300  storage       POST attachment volume=1234
     0.100  storage       POST attachment 5678 os-complete
     0.020  libvirt       attach disk on hosta
  per kind: start-up 0.150, configuration 0.002, keystone 0.080, storage 0.400, libvirt 0.020; command total 1.000
"""


def test_a_timings_report_is_summed_per_kind_with_the_rest_as_other_and_exit():
    found = common.phases(REPORT, wall=1.25)
    assert found["storage"] == pytest.approx(0.4)
    assert found["calls"]["storage"] == 2
    assert found["keystone"] == pytest.approx(0.08)
    assert found["host-call"] == 0.0
    assert found["total"] == pytest.approx(1.0)
    assert found["other"] == pytest.approx(1.0 - 0.652)
    assert found["exit"] == pytest.approx(0.25)
    assert found["longest"][0] == ["storage", 0.3, "POST attachment volume=1234"]


def test_a_command_without_a_timings_report_is_an_error():
    with pytest.raises(ValueError, match="no --timings report"):
        common.phases("attachflow: error: no such volume\n")


def test_phases_of_commands_in_a_row_add_up_and_their_medians_are_per_kind():
    one = common.phases(REPORT, wall=1.25)
    both = common.add_phases(one, one)
    assert both["storage"] == pytest.approx(0.8)
    assert both["calls"]["storage"] == 4
    med = common.median_phases([one, both, both])
    assert med["storage"] == pytest.approx(0.8)
    assert med["n"] == 3


def test_summary_gives_median_spread_and_nearest_rank_p95():
    s = common.summary([float(i) for i in range(1, 21)])
    assert (s["median"], s["min"], s["max"], s["p95"], s["n"]) == (10.5, 1, 20, 19, 20)
    assert common.summary([])["n"] == 0


def test_the_lab_environment_is_what_bash_leaves_not_the_lines_parsed(monkeypatch):
    import attachflow.lab as lab
    monkeypatch.setattr(lab, "env_lines", lambda: [
        "unset STALE", "export OS_CLOUD=attachflow-lab",
        "cinder() ( command cinder \"$@\" )", 'export PATH=/opt/lab/bin:"$PATH"'])
    env = common.lab_env({"PATH": "/usr/bin:/bin", "STALE": "x"})
    assert env["PATH"] == "/opt/lab/bin:/usr/bin:/bin"
    assert env["OS_CLOUD"] == "attachflow-lab"
    assert "STALE" not in env and "SHLVL" not in env


def _samples(n: int, around: float) -> list[float]:
    rng = random.Random(n * around)
    return [around * rng.uniform(0.9, 1.1) for _ in range(n)]


def _phases(total: float) -> dict:
    return common.phases(REPORT.replace("command total 1.000", f"command total {total}"),
                         wall=total + 0.1)


def synthetic_results(reps: int = 3) -> dict:
    """A results document as benchmarks.run writes it, made by its own builders."""
    pair = [{"attach": _phases(1.0), "detach": _phases(0.8)} for _ in range(reps)]
    ad = attaching.attach_detach_result({
        "floor": _samples(reps, 0.6), "library": _samples(reps, 0.7),
        "cli": _samples(reps, 2.0), "cli_attach": _samples(reps, 1.1),
        "cli_detach": _samples(reps, 0.9), "cli_no_token_cache": _samples(reps, 3.0),
        "cli_phases": pair, "cli_no_cache_phases": pair, "library_phases": pair})
    peers = attaching.peers_result({
        "openstack_volume_show": _samples(reps, 1.8), "openstack_keystone_s":
        _samples(reps, 0.1), "attachflow_list": _samples(reps, 0.8),
        "attachflow_attach": _samples(reps, 1.2), "list_phases": [_phases(0.7)] * reps,
        "attach_phases": [_phases(1.1)] * reps})
    migration = {str(v): migrating.migration_result({
        "attachflow": _samples(reps, 4.0), "raw": _samples(reps, 3.0),
        "attachflow_downtime_ms": _samples(reps, 15), "raw_downtime_ms": _samples(reps, 30),
        "attachflow_peak_rss_mib": _samples(reps, 110), "phases": [_phases(3.9)] * reps},
        v) for v in (1, 4)}
    scale = {f"parallel_{n}": scaling.width_result(
        n, {"floor": _samples(reps, 0.4 * n), "attachflow": _samples(reps, 1.0 * n)},
        {"floor": _samples(n * reps, 0.4), "attachflow": _samples(n * reps, 1.0)},
        [_phases(1.0)] * (n * reps)) for n in (1, 4, 16)}
    scale.update(widths=[1, 4, 16], target_ratio_at_16=scaling.TARGET_AT_16)
    movers = {"guests": 4, "sequential_s": common.summary(_samples(reps, 14)),
              "concurrent_s": common.summary(_samples(reps, 6)), "speedup": 14 / 6}
    startup = {"python_c_pass": common.stats(_samples(10, 0.04)),
               "attachflow_help": common.stats(_samples(10, 0.08)),
               "help_minus_python_s": 0.04}
    return {"reps": reps, "smoke": False, "machine": {
        "cpus": 2, "cpu": "test", "memory_gib": 1, "kernel": "k", "python": "3",
        "libvirt": "l", "qemu": "q", "accel": "TCG"}, "date": "today",
        "lab": {"cinder_token_cache_time": "300"}, "attach_detach": ad, "peers": peers,
        "migration": migration, "scale": scale, "movers": movers, "startup": startup}


def test_results_md_gives_every_figure_its_baseline_target_and_pictures(tmp_path):
    md = report.markdown(synthetic_results(), tmp_path)
    for text in ("attach + detach, CLI", "<= +0.3 s", "**no**, by", "live migration, 4 "
                 "volumes", "<= 1.25x", "16 attaches at once", "<= 1.2x",
                 "`openstack volume show`", "Keystone's share", "token cache off",
                 "](versus.png)", "](phases.png)", "](throughput.png)"):
        assert text in md, text
    assert md.count("| CLI migrate,") == 2


def test_the_plots_are_drawn_next_to_results_md(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # CI without the bench extra: the run would stop at once
        with pytest.raises(SystemExit, match=r"\.\[bench\]"):
            report.draw(synthetic_results(), tmp_path)
        return
    report.draw(synthetic_results(), tmp_path)
    for name in ("versus.png", "phases.png", "throughput.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_smoke_run_takes_every_path_at_its_smallest():
    smoke, full = run.Shapes.smoke(), run.Shapes.full(5)
    assert smoke.reps == 1 and full.reps == 5
    assert full.widths == (1, 4, 16) and full.migration_volumes == (1, 4)
    assert len(smoke.widths) >= 2 and smoke.migration_volumes == (1,)


@pytest.mark.parametrize("name", ["run", "kernel_attach", "keystone_cost", "lab_bringup"])
def test_every_benchmark_command_parses_its_arguments(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert "--smoke" in capsys.readouterr().out
