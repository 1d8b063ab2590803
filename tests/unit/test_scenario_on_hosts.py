"""What the hosts' scenario actions read from a host's own tools, and the rules they put
on a host for a fault (each taken off again, in reverse order, whatever happened)."""

from __future__ import annotations

import pytest

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.hosts import HostConfig
from attachflow.scenario import on_hosts


class Shell:
    """A host's shell that answers each command from a table (argv prefix -> answer)."""

    def __init__(self, answers):
        self.answers = answers
        self.commands = []

    def run(self, argv, stdin=None, timeout=None):
        self.commands.append(list(argv))
        for prefix, answer in self.answers:
            if argv[:len(prefix)] == prefix:
                return answer
        return (0, b"", b"")


def host(shell) -> ComputeHost:
    return ComputeHost(HostConfig(name="nodeb", address="198.18.0.22"), runner=shell)


SESSIONS = (b"tcp: [1] 198.18.0.1:3260,1 iqn.2010-10.org.openstack:volume-v1 (non-flash)\n"
            b"tcp: [2] [fd00::1]:3261,1 iqn.2010-10.org.openstack:volume-v2 (non-flash)\n")


def test_kernel_sessions_are_read_from_iscsiadm():
    found = on_hosts._kernel_sessions(host(Shell([(["sh"], (0, SESSIONS, b""))])))
    assert found == [("198.18.0.1", "3260", "iqn.2010-10.org.openstack:volume-v1"),
                     ("[fd00::1]", "3261", "iqn.2010-10.org.openstack:volume-v2")]


@pytest.mark.parametrize("code", [21, 20, 127])
def test_no_sessions_no_iscsid_and_no_open_iscsi_are_no_kernel_sessions(code):
    assert on_hosts._kernel_sessions(host(Shell([(["sh"], (code, b"", b"x"))]))) == []


def test_any_other_iscsiadm_failure_is_the_hosts_error():
    with pytest.raises(errors.HostError, match="iscsiadm -m session exited 1: broken"):
        on_hosts._kernel_sessions(host(Shell([(["sh"], (1, b"", b"broken"))])))


def test_unreachable_portals_are_refused_by_rules_that_are_removed_afterwards():
    shell = Shell([])
    with on_hosts._unreachable(host(shell), [("198.18.0.1", 3260), ("fd00::1", 3261)]):
        assert shell.commands == [
            ["ip", "-4", "rule", "add", "to", "198.18.0.1/32", "ipproto", "tcp", "dport",
             "3260", "prohibit"],
            ["ip", "-6", "rule", "add", "to", "fd00::1/128", "ipproto", "tcp", "dport",
             "3261", "prohibit"]]
    assert shell.commands[2:] == [
        ["ip", "-6", "rule", "del", "to", "fd00::1/128", "ipproto", "tcp", "dport", "3261",
         "prohibit"],
        ["ip", "-4", "rule", "del", "to", "198.18.0.1/32", "ipproto", "tcp", "dport",
         "3260", "prohibit"]]


def test_a_rule_that_cannot_be_added_takes_off_the_ones_before_it():
    shell = Shell([(["ip", "-6", "rule", "add"], (2, b"", b"RTNETLINK: not supported"))])
    with pytest.raises(errors.HostError, match="not supported"):
        with on_hosts._unreachable(host(shell), [("198.18.0.1", 3260), ("fd00::1", 3261)]):
            pass
    assert shell.commands[-1][:4] == ["ip", "-4", "rule", "del"]


def test_stopped_units_are_unmasked_and_started_even_when_the_step_fails():
    shell = Shell([])
    with pytest.raises(RuntimeError):
        with on_hosts._units_stopped(host(shell), ("iscsid.socket", "iscsid.service"),
                                     restart=("iscsid.socket",)):
            raise RuntimeError("the step failed")
    assert shell.commands == [
        ["systemctl", "mask", "--runtime", "--now", "iscsid.socket", "iscsid.service"],
        ["systemctl", "unmask", "--runtime", "iscsid.socket", "iscsid.service"],
        ["systemctl", "start", "iscsid.socket"]]


def test_a_pattern_mismatch_is_named_by_qemus_own_line():
    log = "read 1048576/1048576 bytes at offset 0\nPattern verification failed at " \
          "offset 0, 1048576 bytes\n"
    assert on_hosts._mismatch(log).startswith("Pattern verification failed at offset 0")
    assert on_hosts._mismatch("") == "no report of the read"


def test_a_by_path_device_names_its_portal():
    path = "/dev/disk/by-path/ip-198.18.0.2:3260-iscsi-iqn.2010-10.org.openstack:v-lun-1"
    assert on_hosts._BY_PATH.search(path).groups() == ("198.18.0.2", "3260")
