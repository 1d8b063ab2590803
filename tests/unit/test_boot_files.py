"""What a guest boots is the host's own: each hosts file entry may name the kernel,
initrd and command line that `attachflow boot` uses there, and a boot whose kernel or
initrd is not on that host is refused before anything changes (libvirt would only notice
when the domain starts, the last step, after the volume was connected)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from attachflow import cli, domxml, errors, operations
from attachflow.client import Client
from attachflow.connectors import get_transport
from attachflow.hosts import load_host

from test_flows import snapshot
from twins import FakeCinder, fake_host

KERNEL, INITRD = "/var/lib/attachflow-lab/guest/vmlinuz", "/var/lib/attachflow-lab/guest/initrd.img"


@pytest.mark.parametrize("missing", ["kernel", "initrd"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_a_boot_file_missing_on_the_host_is_refused_before_anything_changes(
        cinder, host, missing, transport):
    vol = cinder.create_volume()
    host.runner.files.update({KERNEL, INITRD} - {KERNEL if missing == "kernel" else INITRD})
    before = snapshot(cinder, host)
    calls = len(cinder.calls)
    with pytest.raises(errors.InputError) as refused:
        operations.boot(cinder, host, get_transport(transport), "vm1", vol,
                        direct_boot=domxml.DirectBoot(KERNEL, INITRD, "console=ttyS0"))
    path = KERNEL if missing == "kernel" else INITRD
    assert str(refused.value) == (
        f"the {missing} '{path}' is not a readable file on hosta: boot a {missing} that "
        f"is there (--{missing}, or boot_{missing} in hosta's entry of the hosts file) or "
        "copy it there; nothing was changed")
    assert snapshot(cinder, host) == before
    assert cinder.calls[calls:] == []  # the storage side was not even asked
    assert ["test", "-r", path] in host.runner.commands  # looked on the host itself


def test_boot_files_that_are_on_the_host_boot(cinder, host):
    vol = cinder.create_volume()
    host.runner.files.update({KERNEL, INITRD})
    operations.boot(cinder, host, get_transport("native"), "vm1", vol,
                    direct_boot=domxml.DirectBoot(KERNEL, INITRD))
    assert host.hypervisor.domains["vm1"].active
    # without a direct boot there is nothing to look at
    host.runner.commands.clear()
    operations.boot(cinder, host, get_transport("native"), "vm2", cinder.create_volume())
    assert host.runner.commands == []


def test_a_host_whose_shell_cannot_tell_is_an_error_not_a_missing_file(cinder, host):
    host.runner.run = lambda argv, stdin=None, timeout=None: (127, b"", b"test: not found")
    with pytest.raises(errors.HostError, match="hosta: could not look for '/k'"):
        operations.boot(cinder, host, get_transport("native"), "vm1",
                        cinder.create_volume(), direct_boot=domxml.DirectBoot("/k"))


def test_on_the_local_host_the_files_are_looked_at_here(cinder, tmp_path):
    local = fake_host("local", target=cinder)
    kernel = tmp_path / "vmlinuz"
    with pytest.raises(errors.InputError, match="not a readable file on local"):
        operations.boot(cinder, local, get_transport("native"), "vm1",
                        cinder.create_volume(), direct_boot=domxml.DirectBoot(str(kernel)))
    kernel.write_bytes(b"\x7fELF")
    operations.boot(cinder, local, get_transport("native"), "vm1", cinder.create_volume(),
                    direct_boot=domxml.DirectBoot(str(kernel)))
    assert local.runner.commands == []


# -- the hosts file ------------------------------------------------------------------------

def hosts_file(tmp_path, body: str) -> dict[str, str]:
    (tmp_path / "hosts.toml").write_text(body)
    return {"ATTACHFLOW_HOSTS": str(tmp_path / "hosts.toml")}


def test_a_hosts_file_entry_names_what_guests_boot_there(tmp_path):
    env = hosts_file(tmp_path, f'[hosts.hosta]\naddress = "198.18.0.11"\n'
                               f'boot_kernel = "{KERNEL}"\nboot_initrd = "{INITRD}"\n'
                               f'boot_cmdline = "console=ttyS0 quiet"\n'
                               f'[hosts.nodea]\naddress = "198.18.0.21"\n')
    cfg = load_host("hosta", env)
    assert (cfg.boot_kernel, cfg.boot_initrd, cfg.boot_cmdline) == (
        KERNEL, INITRD, "console=ttyS0 quiet")
    node = load_host("nodea", env)
    assert (node.boot_kernel, node.boot_initrd, node.boot_cmdline) == (None, None, None)


def test_a_boot_path_that_is_not_absolute_is_refused_naming_the_line(tmp_path):
    env = hosts_file(tmp_path, '[hosts.hosta]\naddress = "198.18.0.11"\n'
                               'boot_kernel = "vmlinuz"\n')
    with pytest.raises(errors.InputError) as refused:
        load_host("hosta", env)
    assert str(refused.value) == (
        f"hosts file {tmp_path / 'hosts.toml'}, line 3: host 'hosta', key 'boot_kernel': "
        "must be an absolute path on the host, not 'vmlinuz'")


# -- `attachflow boot`: the command line, then the host's entry, then the environment ------

@pytest.fixture
def world(monkeypatch):
    cinder = FakeCinder()
    hosts = {"hosta": fake_host("hosta", target=cinder),
             "nodea": fake_host("nodea", target=cinder, address="198.18.0.21")}
    hosts["hosta"].cfg = dataclasses.replace(hosts["hosta"].cfg, boot_kernel=KERNEL,
                                             boot_initrd=INITRD, boot_cmdline="quiet")
    hosts["hosta"].runner.files.update({KERNEL, INITRD, "/mine"})

    def client(transport=None, api=None, os_cloud=None, progress=None,
               os_service_cloud=None, state_dir=None, lock_wait=None):
        return Client(transport=transport, api=api, progress=progress, storage=cinder,
                      hosts=hosts)

    monkeypatch.setattr(cli, "_client", client)
    # what `lab env` exported before the hosts file named what each host boots
    monkeypatch.setenv("ATTACHFLOW_BOOT_KERNEL", KERNEL)
    monkeypatch.setenv("ATTACHFLOW_BOOT_INITRD", INITRD)
    monkeypatch.setenv("ATTACHFLOW_BOOT_CMDLINE", "from-env")
    return cinder, hosts


def boot(cinder, *args):
    return CliRunner().invoke(cli.cli, ["boot", "vm1", "--volume", cinder.create_volume(),
                                        "--transport", "native", *args],
                              catch_exceptions=False)


def os_of(host) -> dict[str, str | None]:
    dom = host.hypervisor.domains["vm1"].defined
    root = __import__("xml.etree.ElementTree", fromlist=["x"]).fromstring(dom.to_xml())
    return {tag: root.findtext(f"os/{tag}") for tag in ("kernel", "initrd", "cmdline")}


def test_boot_uses_the_hosts_entry_before_the_environment(world):
    cinder, hosts = world
    result = boot(cinder, "--host", "hosta")
    assert result.exit_code == 0, result.output
    assert os_of(hosts["hosta"]) == {"kernel": KERNEL, "initrd": INITRD, "cmdline": "quiet"}


def test_the_command_line_comes_first_and_no_kernel_boots_the_volume(world):
    cinder, hosts = world
    result = boot(cinder, "--host", "hosta", "--kernel", "/mine", "--cmdline", "debug")
    assert result.exit_code == 0, result.output
    assert os_of(hosts["hosta"]) == {"kernel": "/mine", "initrd": INITRD, "cmdline": "debug"}
    hosts["hosta"].hypervisor.destroy("vm1")
    hosts["hosta"].hypervisor.undefine("vm1")
    result = boot(cinder, "--host", "hosta", "--no-kernel")
    assert result.exit_code == 0, result.output
    assert os_of(hosts["hosta"]) == {"kernel": None, "initrd": None, "cmdline": None}
    assert boot(cinder, "--no-kernel", "--kernel", "/k", "--host", "hosta").exit_code == 2


def test_a_kernel_the_node_does_not_have_is_one_line_exit_2_and_nothing_changed(world):
    cinder, hosts = world
    node = hosts["nodea"]
    before = snapshot(cinder, node)
    result = boot(cinder, "--host", "nodea")   # its entry names none: the env's applies
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"attachflow: error: the kernel '{KERNEL}' is not a readable file on nodea: boot "
        "a kernel that is there (--kernel, or boot_kernel in nodea's entry of the hosts "
        "file) or copy it there; nothing was changed"]
    after = snapshot(cinder, node)
    assert after["domains"] == before["domains"] == {}
    assert after["host_sessions"] == before["host_sessions"]
    assert all(status == "available" and not atts
               for status, atts, _exported in after["volumes"].values())
    result = CliRunner().invoke(cli.cli, ["operations", "--all", "-f", "json"])
    assert result.exit_code == 0 and json.loads(result.output) == [], result.output


def test_the_labs_hosts_file_gives_each_host_the_boot_files_it_has(tmp_path, monkeypatch):
    import attachflow.lab as lab_api
    from attachflow.lab import guest, layout
    monkeypatch.setenv("ATTACHFLOW_LAB_DIR", str(tmp_path / "lab"))
    lab_api._write_hosts_file(lab_api.components("noauth", kernel_nodes=True))
    env = {"ATTACHFLOW_HOSTS": str(layout.hosts_file())}
    for host in lab_api.HOSTS:  # they see this machine's state dir, where the image is
        cfg = load_host(host, env)
        assert (cfg.boot_kernel, cfg.boot_initrd, cfg.boot_cmdline) == (
            str(guest.image_dir() / "vmlinuz"), str(guest.image_dir() / "initrd.img"),
            guest.CMDLINE)
    for node in layout.NODES:  # the image is not on the nodes: guests boot their volume
        cfg = load_host(node, env)
        assert (cfg.boot_kernel, cfg.boot_initrd, cfg.boot_cmdline) == (None, None, None)
    # and `lab env` no longer names one kernel for every host, and unsets the old one
    monkeypatch.setattr(lab_api, "_auth_env", lambda: ([], []))
    lines = lab_api.env_lines()
    assert "ATTACHFLOW_BOOT_KERNEL" in lines[0].split() and lines[0].startswith("unset ")
    assert not [line for line in lines[1:] if "ATTACHFLOW_BOOT_" in line]
