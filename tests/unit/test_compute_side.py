import pytest

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.hosts import HostConfig

from twins import FakeHypervisor, FakeRunner


class ClosingHypervisor(FakeHypervisor):
    closed = 0

    def close(self):
        self.closed += 1


class ClosingRunner(FakeRunner):
    closed = 0

    def close(self):
        self.closed += 1


def _host():
    return ComputeHost(HostConfig("hostb", "198.18.0.12"),
                       hypervisor=ClosingHypervisor("hostb"), runner=ClosingRunner("hostb"))


def test_a_host_in_a_with_block_is_closed_at_its_end():
    host = _host()
    with host as entered:
        assert entered is host
        assert (host.hypervisor.closed, host.runner.closed) == (0, 0)
    assert (host.hypervisor.closed, host.runner.closed) == (1, 1)


def test_a_host_is_closed_when_the_with_block_raises_and_the_error_goes_on():
    host = _host()
    with pytest.raises(ZeroDivisionError):
        with host:
            1 / 0
    assert (host.hypervisor.closed, host.runner.closed) == (1, 1)


class _LibvirtError(Exception):
    def __init__(self, message, code=38):
        super().__init__(message)
        self.code = code

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return str(self)


class _Conn:
    """A libvirt connection that dies when libvirtd restarts."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.generation = daemon.generation
        self.closed = False

    def isAlive(self):
        return not self.closed and self.generation == self.daemon.generation

    def close(self):
        self.closed = True

    def _check(self):
        if not self.isAlive():
            raise _LibvirtError("Cannot write data: Broken pipe")

    def getHostname(self):
        self._check()
        return "hosta"

    def domainEventRegisterAny(self, dom, event, callback, opaque):
        self._check()
        if dom.conn is not self:  # as libvirt: a handle is only good on its connection
            raise _LibvirtError("invalid argument: domain 'vm1' must match connection",
                                code=8)
        self.daemon.watches[id(callback)] = (self, callback)
        return id(callback)

    def domainEventDeregisterAny(self, watch_id):
        self._check()
        self.daemon.watches.pop(watch_id)

    def lookupByName(self, name):
        self._check()
        if name != "vm1":
            raise _LibvirtError("no domain", code=42)
        conn = self

        class Dom:
            def __init__(self):
                self.conn = conn

            def name(self):
                return "vm1"

            def UUIDString(self):
                return "9b6c8c35-0a7e-4d32-b1b6-5f0e3c1c2b11"

            def isActive(self):
                conn._check()
                return 1

            def isPersistent(self):
                return 1

            def attachDeviceFlags(self, xml, flags):
                if conn.generation != conn.daemon.generation:  # refused, never sent
                    raise _LibvirtError("internal error: client socket is closed")
                conn._check()
                conn.daemon.changes.append(("attach", xml, conn.generation))

            def XMLDesc(self, flags):
                conn._check()
                disks = (_DISK_XML,) if conn.daemon.disk_plugged else ()
                return f"<domain><name>vm1</name><devices>{''.join(disks)}</devices></domain>"

            def detachDeviceFlags(self, xml, flags):
                if conn.generation != conn.daemon.generation:
                    raise _LibvirtError("internal error: client socket is closed")
                conn._check()
                conn.daemon.changes.append(("detach", flags, conn.generation))
                if conn.daemon.on_unplug_request:
                    conn.daemon.on_unplug_request()
        return Dom()


_DISK_XML = ("<disk type='block' device='disk'><source dev='/dev/sdb'/>"
             "<target dev='vdb' bus='virtio'/><serial>v1</serial><alias name='ua-v1'/>"
             "</disk>")


class _Daemon:
    """The fake libvirt module: open() connects to a libvirtd that can restart."""

    libvirtError = _LibvirtError
    VIR_ERR_NO_DOMAIN = 42
    VIR_DOMAIN_AFFECT_LIVE = 1
    VIR_DOMAIN_AFFECT_CONFIG = 2
    VIR_ERR_OPERATION_FAILED = 9
    VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED = 15

    def __init__(self):
        self.generation = 0
        self.opened = 0
        self.changes = []
        self.watches = {}
        self.disk_plugged = True
        self.on_unplug_request = None

    def guest_releases_the_disk(self, tell_watchers=True):
        self.disk_plugged = False
        for conn, callback in list(self.watches.values()) if tell_watchers else ():
            if conn.isAlive():
                callback(conn, None, "ua-v1", None)

    def open(self, uri):
        self.opened += 1
        return _Conn(self)

    def restart(self):
        self.generation += 1
        self.watches.clear()  # they went with the connections


def test_a_restarted_libvirtd_is_reconnected_and_a_read_asked_again(monkeypatch):
    from attachflow import compute_side
    daemon = _Daemon()
    monkeypatch.setattr(compute_side, "_libvirt", lambda: daemon)
    hv = compute_side.LibvirtHypervisor("qemu:///system", "hosta")
    assert hv.lookup("vm1").active and daemon.opened == 1
    daemon.restart()  # between two calls: the next one connects again
    assert hv.hostname() == "hosta" and daemon.opened == 2
    daemon.restart()
    conn = hv._conn
    conn.generation = daemon.generation  # looks alive, dies at the first call

    def dies_on_call():
        conn.generation = -1
        raise _LibvirtError("Cannot recv data: Connection reset by peer")
    conn.getHostname = dies_on_call
    assert hv.hostname() == "hosta" and daemon.opened == 3
    with pytest.raises(errors.DomainNotFound):
        hv.lookup("vm2")  # an answer, not a broken link: not asked again
    assert daemon.opened == 3


class _Disk:
    target_dev = "vdb"
    alias = "ua-v1"

    def to_xml(self):
        return "<disk/>"


def _restartable(monkeypatch):
    """A LibvirtHypervisor over the fake libvirt whose daemon can restart."""
    from attachflow import compute_side
    daemon = _Daemon()
    monkeypatch.setattr(compute_side, "_libvirt", lambda: daemon)
    return daemon, compute_side.LibvirtHypervisor("qemu:///system", "hosta")


def test_a_change_after_libvirtd_restarted_goes_over_a_new_connection(monkeypatch):
    """The restart is not yet noticed (the connection still looks alive): the lookup
    that starts the change finds the link dead, and the change is made once, on the new
    connection."""
    daemon, hv = _restartable(monkeypatch)
    assert hv.lookup("vm1").active and daemon.opened == 1
    stale = hv._conn
    daemon.restart()
    stale.generation = daemon.generation  # looks alive until its next call

    def dies_on_call(name):
        stale.generation = -1
        raise _LibvirtError("internal error: client socket is closed")
    stale.lookupByName = dies_on_call
    hv.attach_device("vm1", _Disk(), live=True, config=True)
    assert daemon.changes == [("attach", "<disk/>", daemon.generation)]
    assert daemon.opened == 2 and hv._conn is not stale


def test_a_change_the_client_could_not_send_is_made_once_on_a_new_connection(monkeypatch):
    """libvirtd restarted between the lookup and the change: libvirt's client refuses to
    send the change ("client socket is closed"), so it did not happen, and it is made on
    a new connection."""
    daemon, hv = _restartable(monkeypatch)
    hv.lookup("vm1")
    stale = hv._conn
    real_lookup = stale.lookupByName

    def lookup_then_restart(name):
        dom = real_lookup(name)
        daemon.restart()
        stale.generation = -1
        return dom
    stale.lookupByName = lookup_then_restart
    hv.attach_device("vm1", _Disk(), live=True, config=False)
    assert daemon.changes == [("attach", "<disk/>", daemon.generation)]
    assert daemon.opened == 2


def test_a_live_detach_whose_connection_dies_after_the_lookup_watches_on_a_new_one(
        monkeypatch):
    """libvirtd restarted between the domain's lookup and the watch for DeviceRemoved:
    the handle and the watch are both made again on one new connection, never a handle
    of the old connection with the new one."""
    daemon, hv = _restartable(monkeypatch)
    hv.lookup("vm1")
    stale = hv._conn
    real_lookup = stale.lookupByName

    def lookup_then_restart(name):
        dom = real_lookup(name)
        daemon.restart()
        return dom
    stale.lookupByName = lookup_then_restart
    daemon.on_unplug_request = daemon.guest_releases_the_disk
    hv.detach_device("vm1", _Disk(), live=True, config=False, timeout=5)
    assert daemon.changes == [("detach", 1, daemon.generation)]
    assert daemon.opened == 2 and daemon.watches == {}


def test_a_live_detach_waiting_while_libvirtd_restarts_sees_the_release_it_missed(
        monkeypatch):
    """The guest lets go of the disk while libvirtd is down, so the event is lost; the
    wait goes on over a new connection, whose XML shows the disk gone."""
    daemon, hv = _restartable(monkeypatch)

    def restart_and_release():
        daemon.on_unplug_request = None
        daemon.restart()
        daemon.guest_releases_the_disk(tell_watchers=False)
    daemon.on_unplug_request = restart_and_release
    hv.detach_device("vm1", _Disk(), live=True, config=False, timeout=5)
    assert daemon.opened == 2 and daemon.watches == {}
    assert not daemon.disk_plugged


def test_a_live_detach_the_guest_never_answers_times_out_and_leaves_no_watch(monkeypatch):
    daemon, hv = _restartable(monkeypatch)
    with pytest.raises(errors.DeviceRemovalTimeout, match="did not release vdb within 1 s"):
        hv.detach_device("vm1", _Disk(), live=True, config=False, timeout=1)
    assert daemon.watches == {} and daemon.opened == 1
    assert [c[0] for c in daemon.changes] == ["detach"]


def test_a_live_detach_over_a_libvirtd_that_keeps_dying_gives_up_with_its_error(
        monkeypatch):
    daemon, hv = _restartable(monkeypatch)
    daemon.on_unplug_request = daemon.restart
    with pytest.raises(errors.HypervisorError, match="^detach disk on hosta: Cannot write"):
        hv.detach_device("vm1", _Disk(), live=True, config=False, timeout=5)
    assert daemon.watches == {}


def test_a_domain_undefined_while_the_host_is_listed_is_left_out():
    """libvirt lists a domain, then it is undefined before it is described (another
    operation, a guest shut down): the listing goes on without it."""
    import libvirt
    from attachflow.compute_side import LibvirtHypervisor

    class Gone:
        def name(self):
            error = libvirt.libvirtError("Domain not found: no domain with matching uuid")
            error.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 2, "", None,
                         None, 0, 0)
            raise error

    class Here:
        def name(self): return "vm"
        def UUIDString(self): return "u-1"
        def isActive(self): return 1
        def isPersistent(self): return 1

    class Conn:
        def listAllDomains(self, flags): return [Gone(), Here()]
        def isAlive(self): return 1

    hv = LibvirtHypervisor("test:///default", "hosta")
    hv._conn = Conn()
    assert [(d.name, d.uuid) for d in hv.list_domains()] == [("vm", "u-1")]
