"""The kernel nodes' share of `lab up` without the machine: the attachflow wheel they install
when attachflow was installed by pip (no source tree), and a bring-up of nodes that fails
on a running lab, which must leave that lab as it was."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

import attachflow.lab as lab_api
from attachflow.lab import component, install, layout, nodewheel
from attachflow.lab.errors import LabError


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTACHFLOW_LAB_DIR", str(tmp_path / "lab"))
    (tmp_path / "lab").mkdir()
    return tmp_path / "lab"


def installed(site: Path) -> importlib.metadata.Distribution:
    """attachflow as pip leaves it in site-packages: the package, byte-compiled files,
    and a .dist-info with what pip records about the installation."""
    files = {
        "attachflow/__init__.py": "VERSION = 'installed'\n",
        "attachflow/cli.py": "def main():\n    return 0\n",
        "attachflow/lab/templates/hosts.toml": "# ${entries}\n",
        "attachflow/__pycache__/cli.cpython-311.pyc": "compiled",
        "attachflow-0.1.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: attachflow\nVersion: 0.1.0\n",
        "attachflow-0.1.0.dist-info/entry_points.txt":
            "[console_scripts]\nattachflow = attachflow.cli:main\n",
        "attachflow-0.1.0.dist-info/licenses/LICENSE": "Apache-2.0\n",
        "attachflow-0.1.0.dist-info/INSTALLER": "pip\n",
        "attachflow-0.1.0.dist-info/direct_url.json": '{"url": "file:///tmp/x"}\n',
        "../../../bin/attachflow": "#!/usr/bin/python3\n",
    }
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    record = [f"{name},," for name in files] + ["attachflow-0.1.0.dist-info/RECORD,,"]
    (site / "attachflow-0.1.0.dist-info/RECORD").write_text("\n".join(record) + "\n")
    return importlib.metadata.PathDistribution(site / "attachflow-0.1.0.dist-info")


def test_an_installed_attachflow_becomes_a_wheel_that_pip_installs(tmp_path):
    site = tmp_path / "prefix/lib/python3/site-packages"
    whl = nodewheel.pack_installed(installed(site), tmp_path / "wheel")
    assert whl.name == "attachflow-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        assert names == {"attachflow/__init__.py", "attachflow/cli.py",
                         "attachflow/lab/templates/hosts.toml",
                         "attachflow-0.1.0.dist-info/METADATA",
                         "attachflow-0.1.0.dist-info/entry_points.txt",
                         "attachflow-0.1.0.dist-info/licenses/LICENSE",
                         "attachflow-0.1.0.dist-info/WHEEL",
                         "attachflow-0.1.0.dist-info/RECORD"}
        # RECORD vouches for every file with its real hash and size
        for line in z.read("attachflow-0.1.0.dist-info/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if name.endswith("/RECORD"):
                continue
            data = z.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data)), name
    target = tmp_path / "target"
    cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                         "--no-index", "--target", str(target), str(whl)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert (target / "attachflow/__init__.py").read_text() == "VERSION = 'installed'\n"
    assert (target / "attachflow/lab/templates/hosts.toml").exists()
    assert (target / "bin/attachflow").exists()  # from entry_points.txt


def test_without_a_source_tree_the_nodes_get_the_installed_files(tmp_path, monkeypatch,
                                                                 state):
    dist = installed(tmp_path / "site")
    monkeypatch.setattr(nodewheel, "source_tree", lambda: None)
    monkeypatch.setattr(nodewheel, "installed_distribution", lambda: dist)
    monkeypatch.setattr(nodewheel, "run", lambda *a, **k: pytest.fail("pip wheel ran"))
    whl = nodewheel.wheel()
    assert whl.parent == state / "nodes-wheel"
    with zipfile.ZipFile(whl) as z:
        assert z.read("attachflow/__init__.py") == b"VERSION = 'installed'\n"
    assert nodewheel.wheel() == whl  # made once, for both nodes


def test_a_checkout_is_its_own_source_tree():
    tree = nodewheel.source_tree()
    assert tree is not None and (tree / "attachflow/lab/nodewheel.py").exists()


def test_an_installation_that_is_not_the_running_code_is_refused(tmp_path, monkeypatch):
    dist = installed(tmp_path / "site")
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: dist)
    with pytest.raises(LabError, match="does not list the running files.*from a checkout"):
        nodewheel.installed_distribution()


# -- a failed bring-up of the nodes on a running lab --------------------------------------

class FakeSupervisor:
    def __init__(self):
        self.programs: list[str] = []

    def write_config(self, programs):
        self.programs = [p.name for p in programs]

    def ensure_running(self):
        pass


class Machine:
    """The parts of the machine `lab up` touches, for a lab that runs already."""

    def __init__(self, monkeypatch, state, fail_nodes: bool):
        self.fail_nodes, self.brought_up, self.brought_down = fail_nodes, [], []
        self.supervisor = FakeSupervisor()
        layout.write(state / "auth", "noauth\n")
        monkeypatch.setattr(lab_api, "_need_root", lambda: None)
        monkeypatch.setattr(lab_api, "status", lambda: {"state": "up"})
        monkeypatch.setattr(install, "install", lambda comps, echo: None)
        monkeypatch.setattr(component, "Lab", self.lab)
        monkeypatch.setattr(component, "bring_up", self.bring_up)
        monkeypatch.setattr(component, "bring_down", self.bring_down)

    def lab(self, echo=lambda _m: None):
        return types.SimpleNamespace(echo=echo, supervisor=self.supervisor,
                                     cgroup=types.SimpleNamespace(populated=lambda: True))

    def bring_up(self, lab, comps):
        names = [c.name for c in comps]
        self.brought_up.append(names)
        if self.fail_nodes and "nodea" in names:
            raise LabError("nodea: ssh port closed; console: Kernel panic")

    def bring_down(self, lab, comps):
        self.brought_down.append([c.name for c in comps])
        return []


def test_nodes_that_fail_to_come_up_are_taken_out_and_not_kept(monkeypatch, state):
    machine = Machine(monkeypatch, state, fail_nodes=True)
    with pytest.raises(LabError) as failed:
        lab_api.up(echo=lambda _m: None, kernel_nodes=True)
    message = str(failed.value)
    assert "the kernel nodes did not come up: nodea: ssh port closed" in message
    assert "the lab runs without them" in message and "--kernel-nodes" in message
    assert "\n" not in message
    assert not (state / "kernel-nodes").exists()
    assert machine.brought_down == [["node-image", "nodea", "nodeb", "node-ssh-mesh"]]
    assert not any(p.startswith("node") for p in machine.supervisor.programs)
    assert machine.supervisor.programs  # the rest of the lab's daemons stay configured
    hosts = (state / "hosts.toml").read_text()
    assert "[hosts.hosta]" in hosts and "nodea" not in hosts
    # and the next plain `up` is the lab without them, as before
    machine.fail_nodes = False
    lab_api.up(echo=lambda _m: None)
    assert "nodea" not in machine.brought_up[-1] and "hosta" in machine.brought_up[-1]


def test_nodes_that_came_up_are_kept_by_later_plain_ups(monkeypatch, state):
    machine = Machine(monkeypatch, state, fail_nodes=False)
    lab_api.up(echo=lambda _m: None, kernel_nodes=True)
    assert (state / "kernel-nodes").exists()
    lab_api.up(echo=lambda _m: None)
    assert "nodea" in machine.brought_up[-1]
    assert machine.brought_down == []
