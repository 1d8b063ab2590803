import importlib
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from attachflow import cli, errors
from attachflow.client import Client

from twins import FakeCinder, fake_host


@pytest.fixture
def world(monkeypatch):
    cinder = FakeCinder()
    host = fake_host("hosta", target=cinder)

    def client(transport=None, api=None, os_cloud=None, progress=None, os_service_cloud=None,
               state_dir=None, lock_wait=None):
        # the CLI's own client, on the twins
        return Client(transport=transport, api=api, progress=progress, storage=cinder,
                      hosts={"local": host, "hosta": host})

    monkeypatch.setattr(cli, "_client", client)
    return cinder, host


def run(*args):
    return CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)


def test_help_teaches_every_command():
    out = run("--help").output
    for cmd in ("attach", "detach", "boot", "connector", "lab"):
        assert cmd in out
    for cmd in ("attach", "detach", "boot", "connector"):
        result = run(cmd, "--help")
        assert result.exit_code == 0
        assert "--host" in result.output and "--debug" in result.output


def test_attach_detach_json(world):
    cinder, host = world
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    result = run("attach", vol, "vm1", "--transport", "native", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["device"] == "vdb" and data["api"] == "attachments"
    assert cinder.volumes[vol].status == "in-use"
    result = run("detach", vol, "vm1", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["transport"] == "native"
    assert cinder.volumes[vol].status == "available"


def test_table_output(world):
    cinder, host = world
    host.hypervisor.add_domain("vm1")
    result = run("attach", cinder.create_volume(), "vm1", "--transport", "kernel")
    assert result.exit_code == 0
    assert any(line.replace(" ", "") == "|device|vdb|" for line in result.output.splitlines())


def test_bad_input_exit_2_one_line(world):
    cinder, host = world
    result = run("attach", cinder.create_volume(), "nosuch", "--transport", "native")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "attachflow: error: domain 'nosuch' not found on host hosta"]


def test_bad_usage_exit_2(world):
    assert run("attach", "only-volume").exit_code == 2
    assert run("attach", "v", "d", "--transport", "fibre").exit_code == 2
    assert run("attach", "v", "d", "--api", "nova").exit_code == 2


def test_failure_exit_1_and_undone(world):
    cinder, host = world
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    host.hypervisor.fail("attach_device", errors.HypervisorError("qemu said no"))
    result = run("attach", vol, "vm1", "--transport", "native")
    assert result.exit_code == 1
    assert "guest attach" in result.stderr and "qemu said no" in result.stderr
    assert "all earlier steps undone" in result.stderr
    assert cinder.volumes[vol].status == "available" and not host.hypervisor.secrets


def test_debug_trace_masks_secrets(world, monkeypatch):
    cinder, host = world
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    password = cinder.volumes[vol].chap_password
    result = run("attach", vol, "vm1", "--transport", "native", "--debug", "-f", "json")
    assert result.exit_code == 0
    assert "to vm1: storage connect (attachments) ..." in result.stderr
    assert password not in result.output + result.stderr


def test_debug_trace_shows_the_cause_with_secrets_masked(world, monkeypatch):
    def unreachable(self, name):
        try:
            raise ValueError("auth failed for token=gAAAA-not-for-eyes")
        except ValueError as exc:
            raise errors.HostError("hosta does not answer") from exc
    monkeypatch.setattr(Client, "host", unreachable)
    vol = "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10"
    plain = run("attach", vol, "vm1", "--transport", "native")
    assert plain.stderr == "attachflow: error: hosta does not answer\n"
    result = run("attach", vol, "vm1", "--transport", "native", "--debug")
    assert result.exit_code == plain.exit_code != 0
    assert "ValueError: auth failed for token=" in result.stderr
    assert "The above exception was the direct cause" in result.stderr
    assert "gAAAA-not-for-eyes" not in result.stderr
    assert result.stderr.endswith("attachflow: error: hosta does not answer\n")


def test_boot(world):
    cinder, host = world
    vol = cinder.create_volume()
    result = run("boot", "vm7", "--volume", vol, "--transport", "native", "--virt-type",
                 "qemu", "-f", "json")
    assert result.exit_code == 0, result.output
    assert host.hypervisor.domains["vm7"].active


def test_internal_errors_are_one_line(world, monkeypatch):
    def broken(self, name):
        raise ZeroDivisionError("oops")
    monkeypatch.setattr(Client, "host", broken)
    result = run("attach", "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10", "d", "--transport",
                 "native")
    assert result.exit_code == 1
    assert result.stderr.startswith("attachflow: internal error: ZeroDivisionError")


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from attachflow import cli; "
            "heavy = [m for m in ('os_brick', 'cinderclient', 'libvirt', 'paramiko', "
            "'keystoneauth1', 'openstack') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_help_lists_the_lab_without_importing_it():
    code = ("import sys; from attachflow import cli; cli.main()")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "  lab " in proc.stdout and "host-call" not in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert not {"attachflow.lab", "attachflow.lab.cli", "attachflow.host_call"} & imported


@pytest.mark.parametrize("name", sorted(cli._Cli.lazy))
def test_a_lazy_command_is_listed_as_it_is_defined(name):
    """What `attachflow --help` lists without importing a command is what the command
    itself says, at any width; run, it is the command of its module."""
    group = cli.cli
    ctx = click.Context(group)
    group._listing = True
    try:
        stand_in = group.get_command(ctx, name)
    finally:
        group._listing = False
    command = group.get_command(ctx, name)
    assert command is not stand_in and command.name == name
    module, attribute = cli._Cli.lazy[name][:2]
    assert command is getattr(importlib.import_module(module), attribute)
    assert stand_in.hidden == command.hidden
    for limit in (20, 45, 64, 200):  # a hidden command is not listed: it needs no summary
        assert (stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)
                or command.hidden)


def test_host_call_answers_on_stdout_and_fails_in_one_line():
    result = CliRunner().invoke(cli.cli, ["host-call"], input='{"op": "nope"}')
    assert result.exit_code == 2
    assert result.stderr == "attachflow: error: unknown host-call op 'nope'\n"


@pytest.mark.parametrize("args,flag", [((), False), (("--on-timeout", "postcopy"), True)])
def test_migrate_on_timeout_postcopy_starts_the_migration_with_the_post_copy_flag(
        monkeypatch, args, flag):
    cinder, network = FakeCinder(), {}
    hosts = {name: fake_host(name, cinder, address, network)
             for name, address in (("hosta", "198.18.0.11"), ("hostb", "198.18.0.12"))}
    monkeypatch.setattr(cli, "_client", lambda transport=None, api=None, os_cloud=None,
                        progress=None, os_service_cloud=None, state_dir=None,
                        lock_wait=None: Client(transport=transport, api=api, storage=cinder,
                                              progress=progress, hosts=hosts))
    result = run("boot", "vm", "--volume", cinder.create_volume(), "--transport", "native",
                 "--host", "hosta")
    assert result.exit_code == 0, result.output
    result = run("migrate", "vm", "--host", "hosta", "--to", "hostb", "-f", "json", *args)
    assert result.exit_code == 0, result.output
    assert [r.postcopy for r in hosts["hosta"].hypervisor.migrations] == [flag]
    assert "vm" in hosts["hostb"].hypervisor.domains


def test_timings_say_where_the_time_went_and_keep_the_error_line_last(world, monkeypatch):
    from attachflow import timings
    cinder, host = world
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()

    def storage_call(*args, **kwargs):   # what the real adapter records for each call
        with timings.phase("storage", "GET volume"):
            pass
        raise errors.StorageUnavailable("storage API down")
    monkeypatch.setattr(cinder, "attachment_create", storage_call)
    result = run("attach", vol, "vm1", "--transport", "native", "--timings")
    lines = result.stderr.splitlines()
    assert result.exit_code != 0 and lines[-1].startswith("attachflow: error: ")
    assert "timings (seconds):" in lines
    assert any("start-up" in line and "interpreter" in line for line in lines)
    assert any(line.strip().endswith("storage       GET volume") for line in lines), lines
    summary = next(line for line in lines if "per kind:" in line)
    assert "storage" in summary and "command total" in summary
    # the next command starts its record afresh
    again = run("attach", vol, "vm1", "--transport", "native", "--timings")
    assert sum("GET volume" in line for line in again.stderr.splitlines()) == 1


def test_timings_record_each_phase_kind_only():
    from attachflow import timings
    with pytest.raises(ValueError):
        timings.record("lunch", "x", 1.0)
    timings.reset()
    for _ in range(timings.KEPT + 10):
        timings.record("libvirt", "x", 0.001)
    assert len(timings.taken()) == timings.KEPT
