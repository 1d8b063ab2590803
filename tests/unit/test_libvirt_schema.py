"""The XML attachflow hands to libvirt, checked against libvirt's own RNG schemas with
``virt-xml-validate`` (Debian package libvirt-clients; it runs ``xmllint``, package
libxml2-utils). libvirt does not validate what it is given by default, so XML its schema
refuses would otherwise go unnoticed until a host turns validation on."""

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attachflow import domxml, operations
from attachflow.connectors import get_transport
from attachflow.connectors.iscsi_native import secret_usage
from attachflow.model import Portal

GOLDEN = Path(__file__).parent.parent / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("*.xml"))
TOOLS = (("virt-xml-validate", "libvirt-clients"), ("xmllint", "libxml2-utils"))

# A bare <disk> has no schema of its own: it is checked as the one device of a domain.
MINIMAL_DOMAIN = ("<domain type='qemu'><name>schema-check</name>"
                  "<memory unit='MiB'>64</memory><os><type>hvm</type></os>"
                  "<devices>{disk}</devices></domain>")


def check_tools() -> None:
    missing = [f"{tool} (Debian package {package})" for tool, package in TOOLS
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"libvirt's schema check cannot run: {', '.join(missing)} not found; "
                    "install libvirt-clients (apt-get install libvirt-clients "
                    "libxml2-utils)", pytrace=False)


def validate(xml: str, what: str) -> subprocess.CompletedProcess:
    """virt-xml-validate on ``xml`` with the schema its root element calls for."""
    check_tools()
    root = ET.fromstring(xml).tag
    if root == "disk":
        xml, schema = MINIMAL_DOMAIN.format(disk=xml), "domain"
    elif root in ("domain", "secret"):
        schema = root
    else:
        pytest.fail(f"{what}: no libvirt schema known for <{root}>")
    return subprocess.run(["virt-xml-validate", "-", schema], input=xml, text=True,
                          capture_output=True, timeout=60)


def assert_valid(xml: str, what: str) -> None:
    proc = validate(xml, what)
    assert proc.returncode == 0, (f"{what} does not validate against libvirt's schema:\n"
                                  f"{proc.stderr}{proc.stdout}\n{xml}")


def test_there_are_golden_files():
    names = {p.name for p in GOLDEN_FILES}
    assert {"domain.xml", "secret.xml", "disk-native.xml", "disk-kernel.xml"} <= names


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.name)
def test_golden_file_validates(path):
    assert_valid(path.read_text(), f"tests/golden/{path.name}")


def test_schema_refuses_a_slash_in_a_secret_usage_name():
    """The usage name of earlier versions: the check does see what it is here for."""
    proc = validate(domxml.secret_xml("attachflow/0b1c/4f2e", "CHAP"), "secret")
    assert proc.returncode != 0


@pytest.fixture
def sent(host, monkeypatch):
    """The XML documents the hypervisor is handed, as (what, xml)."""
    hv, out = host.hypervisor, []

    def record(method, to_xml):
        real = getattr(hv, method)

        def wrapper(*args, **kwargs):
            out.append((method, to_xml(*args, **kwargs)))
            return real(*args, **kwargs)
        monkeypatch.setattr(hv, method, wrapper)

    record("define_domain", lambda domain: domain.to_xml(pretty=True))
    record("attach_device", lambda name, disk, live, config: disk.to_xml())
    # the real hypervisor defines a secret from this document
    record("define_secret", lambda usage, value, description:
           domxml.secret_xml(usage, description))
    return out


@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_xml_of_boot_and_attach_validates(cinder, host, sent, transport):
    boot_vol, data_vol = cinder.create_volume(), cinder.create_volume()
    operations.boot(cinder, host, get_transport(transport), "vm9", boot_vol,
                    virt_type="qemu")
    operations.attach(cinder, host, get_transport(transport), data_vol, "vm9")
    methods = [method for method, _ in sent]
    assert methods.count("define_domain") == 1 and methods.count("attach_device") >= 1
    if transport == "native":
        assert methods.count("define_secret") == 2
        domain = next(xml for method, xml in sent if method == "define_domain")
        assert domxml.find_disk(domain, boot_vol).source.secret_usage
    else:
        assert "define_secret" not in methods
    for method, xml in sent:
        assert_valid(xml, f"{transport}: {method}")


@pytest.mark.parametrize("source", [
    domxml.BlockSource("/dev/disk/by-path/ip-198.18.0.2:3260-iscsi-iqn.2010-10.org."
                       "openstack:volume-0b1c-lun-1"),
    domxml.NetworkISCSISource(
        iqn="iqn.2010-10.org.openstack:volume-0b1c", lun=1,
        hosts=(Portal("198.18.0.2", 3260),), auth_username="chapuser",
        secret_usage=secret_usage("0b1c", "4f2e"),
        initiator_iqn="iqn.2024-01.dev.attachflow:hostb")],
    ids=["kernel", "native"])
def test_domain_rewritten_for_another_host_validates(source):
    dom = domxml.Domain.parse((GOLDEN / "domain.xml").read_text())
    xml = dom.with_changes({"0b1c": source}, {"0b1c": '{"api": "attachments"}'}).to_xml()
    assert_valid(xml, "domain rewritten for migration")
