"""The hypervisor's contract (``attachflow.compute_side.Hypervisor``): what libvirt does
with the definitions, disks, metadata and secrets attachflow hands it, and what it
refuses. Everything here works on a guest that is defined and not started (its disks
need no real target), so the same expectations run on the twin and on a lab host.

Fixtures a subclass provides: ``hypervisor`` (a Hypervisor) and ``name`` (a domain name
no host has, removed from the hypervisor afterwards)."""

from __future__ import annotations

import json
import uuid

import pytest

from attachflow import domxml, errors
from attachflow.model import Portal, Secret

ROOT = str(uuid.UUID(int=0x11))
DATA = str(uuid.UUID(int=0x22))


def iscsi_disk(serial: str, dev: str, usage: str | None = None) -> domxml.Disk:
    source = domxml.NetworkISCSISource(
        iqn=f"iqn.2010-10.org.openstack:volume-{serial}", lun=1,
        hosts=(Portal("198.18.0.1", 3260),), auth_username="u" if usage else None,
        secret_usage=usage, initiator_iqn=None)
    return domxml.Disk.build(domxml.DiskSpec(source=source, target_dev=dev, serial=serial))


class HypervisorContract:
    @pytest.fixture
    def defined(self, hypervisor, name):
        """A volume-backed guest, defined and off, with attachflow's record of vda."""
        dom_uuid = str(uuid.uuid4())
        dom = domxml.build_domain(name, dom_uuid, 64, 1, "qemu", iscsi_disk(ROOT, "vda"),
                                  {ROOT: json.dumps({"device": "vda"})})
        hypervisor.define_domain(dom)
        return dom_uuid

    def test_a_defined_guest_is_found_off_and_persistent_with_its_disk(
            self, hypervisor, name, defined):
        ref = hypervisor.lookup(name)
        assert (ref.name, ref.uuid, ref.active, ref.persistent) == \
            (name, defined, False, True)
        assert name in [d.name for d in hypervisor.list_domains()]
        dom = hypervisor.domain(name, inactive=True)
        assert dom.disk(ROOT).target_dev == "vda"
        assert dom.disk(ROOT).source == iscsi_disk(ROOT, "vda").source
        assert dom.volume_entries() == {ROOT: json.dumps({"device": "vda"})}

    def test_an_unknown_guest_is_not_found(self, hypervisor, name):
        with pytest.raises(errors.DomainNotFound):
            hypervisor.lookup(name)
        with pytest.raises(errors.DomainNotFound):
            hypervisor.domain(name, inactive=True)

    def test_a_disk_added_to_the_persistent_definition_and_taken_out(
            self, hypervisor, name, defined):
        disk = iscsi_disk(DATA, "vdb", usage=f"attachflow-contract-{DATA}")
        hypervisor.attach_device(name, disk, live=False, config=True)
        seen = hypervisor.domain(name, inactive=True).disk(DATA)
        assert seen is not None and seen.target_dev == "vdb" and seen.source == disk.source
        hypervisor.detach_device(name, seen, live=False, config=True, timeout=5)
        assert hypervisor.domain(name, inactive=True).disk(DATA) is None
        assert hypervisor.domain(name, inactive=True).disk(ROOT) is not None

    def test_a_second_disk_on_a_taken_device_name_is_refused(self, hypervisor, name,
                                                             defined):
        with pytest.raises(errors.HypervisorError):
            hypervisor.attach_device(name, iscsi_disk(DATA, "vda"), live=False,
                                     config=True)
        assert hypervisor.domain(name, inactive=True).disk(DATA) is None

    def test_metadata_replaced_in_the_persistent_definition(self, hypervisor, name,
                                                            defined):
        entries = {ROOT: json.dumps({"device": "vda"}), DATA: json.dumps({"device": "vdb"})}
        hypervisor.set_metadata(name, domxml.volume_metadata_xml(entries), live=False,
                                config=True)
        assert hypervisor.domain(name, inactive=True).volume_entries() == entries

    def test_a_secret_is_defined_once_and_undefined(self, hypervisor, name):
        usage = f"attachflow-contract-{name}"
        hypervisor.define_secret(usage, Secret("contract-pass-1"), "contract")
        try:
            with pytest.raises(errors.HypervisorError):
                hypervisor.define_secret(usage, Secret("contract-pass-2"), "contract")
        finally:
            assert hypervisor.undefine_secret(usage) is True
        assert hypervisor.undefine_secret(usage) is False

    def test_an_undefined_guest_is_gone(self, hypervisor, name, defined):
        hypervisor.undefine(name)
        with pytest.raises(errors.DomainNotFound):
            hypervisor.lookup(name)
        assert name not in [d.name for d in hypervisor.list_domains()]
