"""The host connector's contract (tests/contracts/connector.py) on os-brick on the
compute-node VM ``nodea``, through ``attachflow host-call`` over ssh as attachflow
drives it, with volumes Cinder exports to the node's initiator; what the node shows is
read there (``test -b``, ``iscsiadm -m session``). The unit suite runs the same
contract on the os-brick twin."""

from __future__ import annotations

import subprocess

import pytest

from contracts.connector import HostConnectorContract

pytestmark = [pytest.mark.lab, pytest.mark.kernel]
NODE = "nodea"
INSTANCE = "3f9c1a52-8d47-4b6e-9a10-5c2e7b8d9f03"


def on_node(script: str) -> subprocess.CompletedProcess:
    from attachflow.lab.ssh import ssh_argv
    return subprocess.run(ssh_argv(NODE, script), capture_output=True, text=True,
                          timeout=120)


class NodeView:
    def has_device(self, path: str) -> bool:
        return on_node(f"test -b {path}").returncode == 0

    def sessions(self, iqn: str) -> int:
        cp = on_node("iscsiadm -m session")
        assert cp.returncode in (0, 21), cp.stderr   # 21: no sessions
        return sum(1 for line in cp.stdout.splitlines() if iqn in line.split())


class TestOsBrickOnANode(HostConnectorContract):
    @pytest.fixture(scope="class")
    def brick(self, lab):
        lab.manager.up(echo=lambda line: print(line, flush=True), kernel_nodes=True)
        from attachflow.compute_side import open_host
        return open_host(NODE).brick

    @pytest.fixture
    def host_ip(self):
        from attachflow.hosts import load_host
        return load_host(NODE).address

    @pytest.fixture
    def export(self, lab, cleanup):
        from attachflow.cinder_side import CinderStorage
        storage = CinderStorage.connect()
        made = []

        def exported(props):
            volume_id = lab.create_volume(name="contract-brick")
            cleanup["volumes"].append(volume_id)
            new = storage.attachment_create(volume_id, INSTANCE, props)
            made.append(new.attachment_id)
            return new.connection
        yield exported
        for attachment_id in made:
            storage.attachment_delete(attachment_id)

    @pytest.fixture
    def host_view(self):
        return NodeView()
