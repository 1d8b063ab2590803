"""`attachflow lab` run by an attachflow that pip installed (no source tree), as a user
who ran `pip install attachflow` has it: the kernel nodes get that installation as their
attachflow, and a bring-up of the nodes that fails leaves the running lab as it was, so
that a later plain `lab up` works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

CHECKOUT = Path(__file__).resolve().parents[2]


def run(argv: list[str], env: dict[str, str], timeout: float = 900, cwd: str = "/"
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


def without_checkout(env: dict[str, str]) -> dict[str, str]:
    """The environment with nothing that points Python at a checkout."""
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def node_taps() -> list[str]:
    from attachflow.lab.layout import NODES, TAP_PREFIX
    from attachflow.lab.network import link_exists
    return [TAP_PREFIX + n for n in NODES if link_exists(TAP_PREFIX + n)]


@pytest.fixture
def restored(lab):
    """The lab brought up again by this checkout's attachflow afterwards: an `up` by
    another attachflow points the hosts file's remote commands at that one."""
    yield
    lab.manager.up(echo=lambda line: print(line, flush=True))


def test_nodes_that_cannot_come_up_leave_the_running_lab_as_it_was(lab, tmp_path,
                                                                   restored):
    if lab.manager.status()["components"].get("nodea"):
        pytest.skip("the lab runs its kernel nodes already (lab down first)")
    # attachflow copied out of the checkout, without it or any installation of its own:
    # no wheel can be made of it for the nodes.
    copy = tmp_path / "copy"
    shutil.copytree(CHECKOUT / "attachflow", copy / "attachflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**without_checkout(dict(os.environ)), "PYTHONPATH": str(copy)}
    cp = run([sys.executable, "-m", "attachflow", "lab", "up", "--kernel-nodes"], env)
    assert cp.returncode == 1, (cp.stdout, cp.stderr)
    error = cp.stderr.strip().splitlines()[-1]
    assert error.startswith("attachflow: error: lab: the kernel nodes did not come up: ")
    assert "the lab runs without them" in error and "--kernel-nodes" in error
    status = lab.manager.status()
    assert "nodea" not in status["components"] and status["state"] == "up"
    assert not (lab.state / "kernel-nodes").exists()
    assert node_taps() == []
    assert "nodea" not in Path(status["hosts_file"]).read_text()
    # a plain `lab up`, as the operator runs it next, is the lab as before
    cp = run(["attachflow", "lab", "up"], dict(os.environ), timeout=600)
    assert cp.returncode == 0, cp.stderr
    assert "nodea" not in lab.manager.status()["components"]


@pytest.mark.kernel
def test_an_attachflow_installed_by_pip_brings_the_kernel_nodes_up(lab, tmp_path, restored):
    if lab.manager.status()["components"].get("nodea"):
        pytest.skip("the lab runs its kernel nodes already (lab down first)")
    venv = tmp_path / "venv"
    base = without_checkout(dict(os.environ))
    # The dependencies come from this machine's Python; attachflow itself from a wheel
    # pip builds and installs: no source tree next to the installed package.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    cp = run([str(venv / "bin/pip"), "install", "-q", "--no-deps", str(CHECKOUT)], base)
    assert cp.returncode == 0, cp.stderr
    where = run([str(venv / "bin/python"), "-c", "import attachflow; print(attachflow.__file__)"],
                base).stdout.strip()
    assert where.startswith(str(venv)), where
    shutil.rmtree(lab.state / "nodes-wheel", ignore_errors=True)  # made by another up
    cp = run([str(venv / "bin/attachflow"), "lab", "up", "--kernel-nodes"], base,
             timeout=1800)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert (lab.state / "kernel-nodes").exists()
    # the node runs the installed files: the same lab templates, byte for byte
    from attachflow.lab.ssh import ssh_argv
    installed = Path(where).parent / "lab/templates/hosts.toml"
    there = subprocess.run(ssh_argv("nodea", "python3 -c 'import attachflow.lab, pathlib; "
                                             "print(pathlib.Path(attachflow.lab.__file__)"
                                             ".with_name(\"templates\") / \"hosts.toml\")'"
                                             " | xargs cat"),
                           capture_output=True, text=True, timeout=120)
    assert there.returncode == 0, there.stderr
    assert there.stdout == installed.read_text()
    cp = run([str(venv / "bin/attachflow"), "connector", "--host", "nodea",
              "--transport", "kernel", "-f", "json"], {**base, **lab_env(lab)}, timeout=300)
    assert cp.returncode == 0, cp.stderr


def lab_env(lab) -> dict[str, str]:
    from labenv import evaluated
    return evaluated(lab.manager.env_lines(), base=without_checkout(dict(os.environ)))
