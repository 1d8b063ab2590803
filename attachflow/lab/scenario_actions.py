"""Scenario steps on the attachflow lab: the hosts' steps of any two-node lab, plus what
only the lab can do or see, because its storage side runs here.

- Faults on the lab's own daemons: the storage API (``cinder-api``) and a host's libvirtd
  stopped through the lab's supervisord, as an operator stops them, and started again
  (and waited for) when the step ends. The compute-node VMs run systemd: their faults
  are the hosts' own.
- Where the bytes land: after a pattern is written or verified through the guest, the
  file tgtd exports for the volume holds it too.
- tgtd's view in ``snapshot``: the initiators logged in to each of the run's volumes, so
  a refused step that leaves a session at the target is caught.

Side effects owned: stopping and starting the lab's daemons for a fault step; reading the
volumes' backing files and tgtd's target list.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

from attachflow.lab import layout, tgtd
from attachflow.lab.component import Lab
from attachflow.lab.computehost import virsh_ok
from attachflow.lab.shell import port_open, wait_for
from attachflow.scenario.engine import Deviation, Stamp
from attachflow.scenario.on_hosts import HostActions

RESTART_WAIT = 120.0   # Cinder's API takes seconds to listen again under load


class LabActions(HostActions):
    """``HostActions`` on the attachflow lab (``attachflow lab up``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lab = Lab()

    @contextlib.contextmanager
    def fault(self, name: str, source: str | None,
              destination: str | None) -> Iterator[None]:
        if name == "storage-api-down":
            with self._stopped("cinder-api", self._storage_answers):
                yield
        elif name == "destination-libvirtd-stopped" and destination in layout.HOSTS:
            with self._stopped(f"{destination}-libvirtd",
                               lambda: virsh_ok(destination)):
                yield
        else:
            with super().fault(name, source, destination):
                yield

    @contextlib.contextmanager
    def _stopped(self, program: str, ready) -> Iterator[None]:
        supervisor = self._lab.supervisor
        supervisor.stop(program)
        try:
            yield
        finally:
            supervisor.start(program)
            wait_for(f"{program} to answer again", ready, RESTART_WAIT, interval=0.5)

    @staticmethod
    def _storage_answers() -> bool:
        return port_open(layout.CINDER_LISTEN, layout.CINDER_PORT)

    # -- where the bytes land ----------------------------------------------------------------
    def write(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None:
        super().write(guest, host, volume_id, stamp)
        self._check_backing(volume_id, stamp)

    def verify(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None:
        super().verify(guest, host, volume_id, stamp)
        self._check_backing(volume_id, stamp)

    def _check_backing(self, volume_id: str, stamp: Stamp) -> None:
        target = next((t for iqn, t in tgtd.targets().items() if iqn.endswith(volume_id)),
                      None)
        if target is None or not target["backing"]:
            raise Deviation(f"tgtd to export {volume_id}", "no target with a LUN for it")
        path = target["backing"][-1]
        with open(path, "rb") as f:
            f.seek(stamp.offset)
            data = f.read(stamp.length)
        if data != bytes([stamp.byte]) * stamp.length:
            other = next((i for i, b in enumerate(data) if b != stamp.byte), len(data))
            raise Deviation(f"{stamp} in {path}",
                            f"byte {stamp.offset + other} is "
                            f"{'missing' if other >= len(data) else hex(data[other])}")

    # -- tgtd's view ----------------------------------------------------------------------
    def snapshot(self, hosts: tuple[str, ...]) -> Mapping[str, Any]:
        state = dict(super().snapshot(hosts))
        for iqn, target in tgtd.targets().items():
            for volume_id in self._volumes:
                if iqn.endswith(volume_id):
                    state[f"target sessions {volume_id}"] = sorted(target["initiators"])
        return state

