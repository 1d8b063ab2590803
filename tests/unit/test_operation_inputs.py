"""The library's entry points refuse bad values themselves, with the one-line message
the command line gives, before anything is contacted (nothing in Cinder or on the host
changes, and no request is sent)."""

import pytest

from attachflow import errors, operations
from attachflow.connectors import get_transport
from test_flows import snapshot


@pytest.fixture
def world(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    cinder.calls.clear()
    host.hypervisor.calls.clear()
    return vol


def refused(cinder, host, call, message):
    before = snapshot(cinder, host)
    with pytest.raises(errors.InputError) as info:
        call()
    assert str(info.value) == message and info.value.exit_code == 2
    assert cinder.calls == [] and host.hypervisor.calls == [] and host.brick.calls == []
    assert snapshot(cinder, host) == before


@pytest.mark.parametrize("bad", ["sda", "vdb1", "/dev/vdb"])
def test_attach_refuses_a_device_that_is_not_a_virtio_disk(cinder, host, world, bad):
    refused(cinder, host, lambda: operations.attach(
        cinder, host, get_transport("native"), world, "vm1", device=bad),
        f"device '{bad}' is not a virtio disk name (vdb, vdc, ..., vdzz)")


@pytest.mark.parametrize("bad", [0, 86401, float("inf")])
def test_attach_and_detach_refuse_a_timeout_out_of_bounds(cinder, host, world, bad):
    message = f"the detach timeout must be a number from 1 to 86400, not {bad}"
    refused(cinder, host, lambda: operations.attach(
        cinder, host, get_transport("native"), world, "vm1", detach_timeout=bad), message)
    refused(cinder, host, lambda: operations.detach(cinder, host, world, "vm1",
                                                    timeout=bad), message)


def test_attach_takes_the_timeout_bounds_and_a_named_device(cinder, host, world):
    res = operations.attach(cinder, host, get_transport("native"), world, "vm1",
                            device="vdc", detach_timeout=86400)
    assert res.device == "vdc"
    assert operations.detach(cinder, host, world, "vm1", timeout=1).device == "vdc"
    res = operations.attach(cinder, host, get_transport("native"), world, "vm1",
                            detach_timeout=1)
    assert res.device == "vdb"


def test_attach_detach_boot_refuse_a_volume_id_that_is_not_a_uuid(cinder, host, world):
    message = ("volume id 'vol-1' is not a UUID (Cinder's volume ids look like "
               "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10)")
    native = get_transport("native")
    refused(cinder, host, lambda: operations.attach(cinder, host, native, "vol-1", "vm1"),
            message)
    refused(cinder, host, lambda: operations.detach(cinder, host, "vol-1", "vm1"), message)
    refused(cinder, host, lambda: operations.boot(cinder, host, native, "vm2", "vol-1"),
            message)


def test_attach_and_detach_refuse_a_domain_name_libvirt_refuses(cinder, host, world):
    message = ("domain name 'a/b' is not valid for libvirt (1-255 characters, no '/' or "
               "control characters)")
    refused(cinder, host, lambda: operations.attach(
        cinder, host, get_transport("native"), world, "a/b"), message)
    refused(cinder, host, lambda: operations.detach(cinder, host, world, "a/b"), message)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "-vm"}, "'-vm' is not a valid name for a new domain (letters, digits, '_', "
                      "'.', '-'; at most 64; starting with a letter or digit)"),
    ({"memory_mib": 15}, "memory (MiB) must be a number from 16 to 1048576, not 15"),
    ({"memory_mib": (1 << 20) + 1},
     "memory (MiB) must be a number from 16 to 1048576, not 1048577"),
    ({"vcpus": 0}, "vcpus must be a number from 1 to 255, not 0"),
    ({"vcpus": 256}, "vcpus must be a number from 1 to 255, not 256"),
    ({"virt_type": "xen"}, "virt type 'xen' is not kvm or qemu"),
    ({"virt_type": "KVM"}, "virt type 'KVM' is not kvm or qemu"),
])
def test_boot_refuses_bad_values_before_anything(cinder, host, world, kwargs, message):
    args = {"name": "vm2", **kwargs}
    refused(cinder, host, lambda: operations.boot(
        cinder, host, get_transport("native"), args.pop("name"), world, **args), message)


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_boot_takes_kvm_and_qemu_and_the_bounds(cinder, host, world, virt_type):
    res = operations.boot(cinder, host, get_transport("native"), "vm2", world,
                          virt_type=virt_type, memory_mib=16, vcpus=255)
    assert res.device == "vda" and not res.already
    defined = host.hypervisor.domains["vm2"].defined
    assert defined.to_xml().count(f"type=\"{virt_type}\"") >= 1
