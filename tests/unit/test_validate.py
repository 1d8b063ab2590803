"""The rules for values from users, as properties over many inputs (hypothesis), and the
command line refusing each bad value in one line, exit 2, before any call is made."""

import math
import re
import uuid

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from attachflow import cli, errors, validate
from attachflow.client import Client

from twins import FakeCinder, fake_host

SETTINGS = settings(max_examples=100, deadline=None)


@SETTINGS
@given(kind=st.sampled_from(sorted(validate.BOUNDS)),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(min_value=-(1 << 40), max_value=1 << 40)))
def test_a_number_passes_exactly_when_finite_and_within_bounds(kind, value):
    low, high = validate.BOUNDS[kind]
    fits = math.isfinite(value) and low <= value <= high
    if fits:
        assert validate.check_number("x", value, kind) == value
    else:
        with pytest.raises(errors.InputError, match=f"x must be a number from "
                                                    f"{validate.bounds_text(kind)}, not"):
            validate.check_number("x", value, kind)


@pytest.mark.parametrize("value", [True, "5", None, [5]])
def test_a_number_must_be_a_number(value):
    with pytest.raises(errors.InputError):
        validate.check_number("x", value, "timeout")


@SETTINGS
@given(st.uuids(), st.sampled_from([str, lambda u: str(u).upper(), lambda u: u.hex]))
def test_any_uuid_is_a_volume_id_in_canonical_form(value, spelling):
    assert validate.check_volume_id(spelling(value)) == str(value)


@SETTINGS
@given(st.text(max_size=60))
def test_text_that_is_not_a_uuid_is_refused(text):
    try:
        uuid.UUID(text)
        canonical = re.fullmatch(r"[0-9a-fA-F-]{32,36}", text) is not None
    except ValueError:
        canonical = False
    if canonical and len(text.replace("-", "")) == 32 and text.count("-") in (0, 4):
        return  # a UUID spelled another way; see the test above
    with pytest.raises(errors.InputError, match="is not a UUID"):
        validate.check_volume_id(text)


@pytest.mark.parametrize("bad", ["../../types", "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a1",
                                 "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10/action",
                                 "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a1g", " " * 36])
def test_volume_ids_that_would_reach_another_api_path_are_refused(bad):
    with pytest.raises(errors.InputError):
        validate.check_volume_id(bad)


@SETTINGS
@given(st.text(min_size=1, max_size=255))
def test_a_domain_name_is_anything_libvirt_takes(name):
    takes = "/" not in name and not any(ord(c) < 32 or ord(c) == 127 for c in name)
    if takes:
        assert validate.check_domain(name) == name
    else:
        with pytest.raises(errors.InputError, match="not valid for libvirt"):
            validate.check_domain(name)


def test_a_domain_name_has_a_length():
    for bad in ("", "x" * 256):
        with pytest.raises(errors.InputError):
            validate.check_domain(bad)


@SETTINGS
@given(st.from_regex(r"\Avd[a-z]{1,2}\Z"))
def test_virtio_device_names_pass(name):
    assert validate.check_device(name) == name


@SETTINGS
@given(st.text(max_size=8).filter(lambda t: not re.fullmatch(r"vd[a-z]{1,2}", t)))
def test_other_device_names_are_refused(name):
    with pytest.raises(errors.InputError, match="is not a virtio disk name"):
        validate.check_device(name)


@SETTINGS
@given(st.text(max_size=70))
def test_new_domain_names_are_portable(name):
    portable = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) is not None
    if portable:
        assert validate.check_new_domain(name) == name
    else:
        with pytest.raises(errors.InputError):
            validate.check_new_domain(name)


def test_messages_show_hostile_values_on_one_printable_line():
    with pytest.raises(errors.InputError) as info:
        validate.check_volume_id("bad\nline\x1b[31m" + "x" * 200)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "..." in message


# -- the command line: one line, exit 2, nothing contacted ----------------------------------

VOL = "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10"


@pytest.fixture
def twins(monkeypatch):
    cinder = FakeCinder()
    host = fake_host("hosta", target=cinder)
    monkeypatch.setattr(cli, "_client", lambda transport=None, api=None, os_cloud=None,
                        progress=None, os_service_cloud=None, state_dir=None,
                        lock_wait=None: Client(transport=transport or "native", api=api,
                                              storage=cinder, progress=progress,
                                              hosts={"local": host, "hosta": host}))
    return cinder, host


REFUSALS = [
    (["attach", "../../types", "vm1"], "volume id '../../types' is not a UUID"),
    (["attach", VOL, "vm/1"], "domain name 'vm/1' is not valid for libvirt"),
    (["attach", VOL, "vm1", "--device", "sda"], "device 'sda' is not a virtio disk name"),
    (["attach", VOL, "vm1", "--detach-timeout", "nan"],
     "--detach-timeout must be a number from 1 to 86400, not nan"),
    (["detach", VOL, "vm1", "--timeout", "nan"], "--timeout must be a number from 1 to"),
    (["detach", VOL, "vm1", "--timeout", "inf"], "not inf"),
    (["detach", VOL, "vm1", "--timeout", "0.5"], "not 0.5"),
    (["detach", VOL, "vm1", "--timeout", "soon"], "--timeout must be a number, not 'soon'"),
    (["boot", "vm1", "--volume", VOL, "--memory", "99999999"],
     "--memory must be a number from 16 to 1048576"),
    (["boot", "vm1", "--volume", VOL, "--memory", "1.5"], "--memory must be a whole number"),
    (["boot", "vm1", "--volume", VOL, "--vcpus", "0"], "--vcpus must be a number from 1"),
    (["boot", "<vm>", "--volume", VOL], "'<vm>' is not a valid name for a new domain"),
    (["boot", "vm1", "--volume", "x"], "volume id 'x' is not a UUID"),
    (["migrate", "vm1", "--to", "hostb", "--max-downtime", "-5"], "--max-downtime must be"),
    (["migrate", "vm1", "--to", "hostb", "--bandwidth", "nan"], "--bandwidth must be"),
    (["migrate", "vm1", "--to", "hostb", "--timeout", "1e999"], "not inf"),
    (["attach", VOL], "Missing argument 'DOMAIN'"),
    (["attach", VOL, "vm1", "-f", "xml"], "'xml' is not one of"),
]


@pytest.mark.parametrize("args,words", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_the_command_line_refuses_bad_values_before_any_call(twins, args, words):
    cinder, host = twins
    host.hypervisor.add_domain("vm1")
    host.hypervisor.calls.clear()
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attachflow: error: "), result.stderr
    assert words in lines[0], lines[0]
    assert "--help" in lines[0]
    assert cinder.calls == [] and host.hypervisor.calls == [] and result.stdout == ""


def test_help_states_the_bounds():
    for command, words in (("detach", "1 to 86400 s"), ("boot", "16 to 1048576 MiB"),
                           ("migrate", "1 to 600000 ms")):
        out = CliRunner().invoke(cli.cli, [command, "--help"]).output
        assert words in " ".join(out.split()), (command, out)


def test_a_mistyped_host_is_refused_before_anything_is_contacted(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[hosts.hosta]\naddress = "198.18.0.11"\n\n'
                     '[hosts.hostb]\naddress = "198.18.0.12"\n')
    monkeypatch.setenv("ATTACHFLOW_HOSTS", str(hosts))

    def no_contact(*args, **kwargs):
        raise AssertionError("nothing may be contacted")

    monkeypatch.setattr("attachflow.client.CinderStorage.connect", no_contact)
    monkeypatch.setattr("attachflow.compute_side.LibvirtHypervisor", no_contact)
    monkeypatch.setattr("attachflow.compute_side.SSHRunner", no_contact)
    for args in (["connector", "--host", "hsota", "--transport", "native"],
                 ["attach", VOL, "vm1", "--host", "hsota"],
                 ["migrate", "vm1", "--host", "hosta", "--to", "hsotb"]):
        result = CliRunner().invoke(cli.cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip().splitlines() == [
            f"attachflow: error: unknown host '{args[args.index('hsota') if 'hsota' in args else -1]}'"
            f"; known: hosta, hostb, local (hosts file {hosts}; or give USER@ADDRESS)"], args


def test_a_malformed_hosts_file_stops_every_command_with_one_line(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[hosts.hosta]\naddress = "198.18.0.11"\nssh_port = "22"\n')
    monkeypatch.setenv("ATTACHFLOW_HOSTS", str(hosts))
    result = CliRunner().invoke(cli.cli, ["connector", "--host", "local", "--transport",
                                          "native"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"attachflow: error: hosts file {hosts}, line 3: host 'hosta', key 'ssh_port': "
        "must be a port number from 1 to 65535, not '22'"]
