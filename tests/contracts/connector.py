"""The host connector's contract (``attachflow.brick.HostConnector``, os-brick's three
calls): what a compute host tells the storage side about itself, and how it logs in to
a volume's target, gives the block device, and logs out again, leaving nothing.

Fixtures a subclass provides: ``brick`` (a HostConnector), ``host_ip`` (the address the
host is given as ``my_ip``), ``export`` (a callable: connector properties -> the
ConnectionInfo of a new volume exported to them, released after the test), and
``host_view`` (an object with ``has_device(path)`` and ``sessions(iqn)``: what the host
itself shows)."""

from __future__ import annotations

import pytest

from attachflow import errors


class HostConnectorContract:
    def test_properties_name_the_hosts_initiator_and_address(self, brick, host_ip):
        props = brick.properties(host_ip, False)
        assert props["ip"] == host_ip and props["multipath"] is False
        assert str(props["initiator"]).startswith("iqn.") and props["host"]
        assert brick.properties(host_ip, True)["multipath"] is True

    def test_connect_gives_the_block_device_and_disconnect_takes_it_all_away(
            self, brick, host_ip, export, host_view):
        conn = export(brick.properties(host_ip, False))
        info = brick.connect("ISCSI", conn.to_brick(), False)
        assert info["type"] == "block" and info["path"].startswith("/dev/")
        assert host_view.has_device(info["path"])
        assert host_view.sessions(conn.iqn) == 1
        brick.disconnect("ISCSI", conn.to_brick(), info, False)
        assert not host_view.has_device(info["path"])
        assert host_view.sessions(conn.iqn) == 0
        brick.disconnect("ISCSI", conn.to_brick(), info, False)  # again: nothing to do

    def test_a_wrong_chap_password_fails_the_login_and_leaves_no_session(
            self, brick, host_ip, export, host_view):
        conn = export(brick.properties(host_ip, False))
        props = dict(conn.to_brick(), auth_password="wrong-password-1234")
        with pytest.raises(errors.HostError) as failed:
            brick.connect("ISCSI", props, False)
        assert "wrong-password-1234" not in str(failed.value)
        assert host_view.sessions(conn.iqn) == 0
        brick.disconnect("ISCSI", props, {}, False)   # what an undo does: nothing left
