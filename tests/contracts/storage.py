"""The storage API's contract (``attachflow.cinder_side.StorageAPI``): what Cinder
answers to each call attachflow makes, in both APIs, and what it refuses.

Fixtures a subclass provides: ``storage`` (a StorageAPI), ``new_volume`` (a callable
that returns the id of a new, available 1 GiB volume the test may use up)."""

from __future__ import annotations

import uuid

import pytest

from attachflow import errors


def connector_of(host: str, ip: str) -> dict:
    """What os-brick's connector properties give for a host without multipath."""
    return {"host": host, "initiator": f"iqn.2024-01.dev.attachflow:{host}", "ip": ip,
            "multipath": False, "platform": "x86_64", "os_type": "linux"}


def statuses(storage, volume_id: str) -> tuple[str, list[str]]:
    """The volume's status and the states of all its attachments."""
    return (storage.get_volume(volume_id).status,
            sorted(a.status for a in storage.attachments_of(volume_id)))


class StorageContract:
    """Each test runs on fresh volumes and leaves them detached."""

    INSTANCE = "0c2d5f06-6b4e-4c0a-9d0e-6a1c3f1e2b01"
    OTHER_INSTANCE = "7a91e3c2-1d4b-4f5e-8c6a-2b3d4e5f6a02"

    @pytest.fixture
    def connector(self):
        return connector_of("hosta", "198.18.0.11")

    @pytest.fixture
    def other_connector(self):
        return connector_of("hostb", "198.18.0.12")

    def test_a_new_volume_is_available_with_no_attachment(self, storage, new_volume):
        vol = storage.get_volume(volume_id := new_volume())
        assert (vol.id, vol.status, vol.size, vol.attachments) == \
            (volume_id, "available", 1, ())
        assert storage.attachments_of(volume_id) == []

    def test_an_unknown_volume_is_not_found(self, storage):
        with pytest.raises(errors.VolumeNotFound):
            storage.get_volume(str(uuid.uuid4()))

    def test_an_attachment_goes_reserved_attaching_attached_and_away(
            self, storage, new_volume, connector):
        volume_id = new_volume()
        new = storage.attachment_create(volume_id, self.INSTANCE, None)
        assert new.connection is None
        assert statuses(storage, volume_id) == ("reserved", ["reserved"])
        assert storage.attachment_show(new.attachment_id, volume_id) is None
        conn = storage.attachment_update(new.attachment_id, volume_id, connector)
        assert conn.driver_volume_type == "iscsi" and conn.volume_id == volume_id
        assert conn.iqn.endswith(volume_id) and conn.lun >= 0 and conn.portal.port > 0
        assert conn.auth_method.upper() == "CHAP" and conn.auth_username
        assert conn.auth_password and conn.access_mode == "rw"
        assert statuses(storage, volume_id) == ("attaching", ["attaching"])
        shown = storage.attachment_show(new.attachment_id, volume_id)
        assert (shown.iqn, shown.lun, shown.portal, shown.auth_username) == \
            (conn.iqn, conn.lun, conn.portal, conn.auth_username)
        storage.attachment_complete(new.attachment_id)
        assert statuses(storage, volume_id) == ("in-use", ["attached"])
        [att] = storage.get_volume(volume_id).attachments
        assert (att.attachment_id, att.server_id) == (new.attachment_id, self.INSTANCE)
        storage.attachment_delete(new.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_an_attachment_made_with_a_connector_has_its_connection_at_once(
            self, storage, new_volume, connector):
        volume_id = new_volume()
        new = storage.attachment_create(volume_id, self.INSTANCE, connector)
        try:
            assert new.connection is not None and new.connection.iqn.endswith(volume_id)
            assert statuses(storage, volume_id) == ("attaching", ["attaching"])
        finally:
            storage.attachment_delete(new.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_a_deleted_attachment_deleted_again_is_done(self, storage, new_volume,
                                                        connector):
        volume_id = new_volume()
        new = storage.attachment_create(volume_id, self.INSTANCE, connector)
        storage.attachment_delete(new.attachment_id)
        storage.attachment_delete(new.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_the_same_guest_gets_a_second_attachment_another_guest_does_not(
            self, storage, new_volume, connector, other_connector):
        """A live migration's second attachment (same instance, made with the
        destination's connector) is made; a second guest on a volume that is not
        multiattach is refused, and so is a connector given later to a second
        attachment; the refusals change nothing."""
        volume_id = new_volume()
        first = storage.attachment_create(volume_id, self.INSTANCE, connector)
        storage.attachment_complete(first.attachment_id)
        made = [first]
        try:
            with pytest.raises(errors.VolumeStateError):
                storage.attachment_create(volume_id, self.OTHER_INSTANCE, other_connector)
            assert statuses(storage, volume_id) == ("in-use", ["attached"])
            second = storage.attachment_create(volume_id, self.INSTANCE, other_connector)
            made.append(second)
            assert second.connection is not None
            assert second.connection.iqn == first.connection.iqn
            # a connection being made shows, even while another is attached
            assert statuses(storage, volume_id) == ("attaching", ["attached", "attaching"])
            # while a connection is being made, nothing else is reserved
            with pytest.raises(errors.VolumeStateError, match="attaching"):
                storage.attachment_create(volume_id, self.INSTANCE, None)
            storage.attachment_complete(second.attachment_id)
            third = storage.attachment_create(volume_id, self.INSTANCE, None)
            made.append(third)
            # a connector given later to a further attachment is refused
            with pytest.raises(errors.VolumeStateError, match="duplicate connectors"):
                storage.attachment_update(third.attachment_id, volume_id, other_connector)
        finally:
            for att in reversed(made):
                storage.attachment_delete(att.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_a_migrations_attachments_settle_to_in_use_either_way(
            self, storage, new_volume, connector, other_connector):
        """The second attachment completed, or deleted (a rollback), and the first
        deleted: the volume is in use by the one left; a bare reservation beside an
        attached one leaves it in use."""
        volume_id = new_volume()
        first = storage.attachment_create(volume_id, self.INSTANCE, connector)
        storage.attachment_complete(first.attachment_id)
        second = storage.attachment_create(volume_id, self.INSTANCE, other_connector)
        storage.attachment_delete(second.attachment_id)            # rolled back
        assert statuses(storage, volume_id) == ("in-use", ["attached"])
        second = storage.attachment_create(volume_id, self.INSTANCE, other_connector)
        storage.attachment_complete(second.attachment_id)          # moved
        assert statuses(storage, volume_id) == ("in-use", ["attached", "attached"])
        storage.attachment_delete(first.attachment_id)
        assert statuses(storage, volume_id) == ("in-use", ["attached"])
        reserved = storage.attachment_create(volume_id, self.INSTANCE, None)
        assert statuses(storage, volume_id) == ("in-use", ["attached", "reserved"])
        storage.attachment_delete(reserved.attachment_id)
        storage.attachment_delete(second.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_a_connector_without_an_initiator_is_refused_and_nothing_is_left(
            self, storage, new_volume):
        volume_id = new_volume()
        new = storage.attachment_create(volume_id, self.INSTANCE, None)
        try:
            with pytest.raises(errors.VolumeStateError, match="initiator"):
                storage.attachment_update(new.attachment_id, volume_id,
                                          {"host": "nowhere", "ip": "198.18.0.99"})
            assert statuses(storage, volume_id) == ("reserved", ["reserved"])
        finally:
            storage.attachment_delete(new.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_a_connection_that_fails_at_create_leaves_a_reservation_it_does_not_name(
            self, storage, new_volume):
        """Cinder reserves, then connects; when connecting fails it answers 500 and
        keeps the reservation (attachflow's flow releases it: tests of the flows)."""
        volume_id = new_volume()
        with pytest.raises(errors.StorageUnavailable, match="initiator") as failed:
            storage.attachment_create(volume_id, self.INSTANCE,
                                      {"host": "nowhere", "ip": "198.18.0.99"})
        assert failed.value.status == 500
        left = storage.attachments_of(volume_id)
        assert [(a.instance_id, a.status) for a in left] == [(self.INSTANCE, "reserved")]
        storage.attachment_delete(left[0].attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_the_legacy_actions_in_their_order(self, storage, new_volume, connector):
        volume_id = new_volume()
        storage.reserve(volume_id)
        assert storage.get_volume(volume_id).status == "attaching"
        with pytest.raises(errors.VolumeStateError):
            storage.reserve(volume_id)
        storage.unreserve(volume_id)
        assert storage.get_volume(volume_id).status == "available"
        storage.reserve(volume_id)
        conn = storage.initialize_connection(volume_id, connector)
        assert conn.iqn.endswith(volume_id) and conn.auth_username
        storage.attach(volume_id, self.INSTANCE, "/dev/vdb", connector["host"])
        vol = storage.get_volume(volume_id)
        assert vol.status == "in-use"
        [att] = vol.attachments
        assert att.server_id == self.INSTANCE
        storage.begin_detaching(volume_id)
        assert storage.get_volume(volume_id).status == "detaching"
        with pytest.raises(errors.VolumeStateError):
            storage.begin_detaching(volume_id)
        storage.roll_detaching(volume_id)
        assert storage.get_volume(volume_id).status == "in-use"
        storage.begin_detaching(volume_id)
        storage.terminate_connection(volume_id, connector)
        storage.detach(volume_id, att.attachment_id)
        assert statuses(storage, volume_id) == ("available", [])

    def test_legacy_refusals_change_nothing(self, storage, new_volume, connector):
        volume_id = new_volume()
        with pytest.raises(errors.VolumeStateError):
            storage.begin_detaching(volume_id)           # not in use
        assert storage.get_volume(volume_id).status == "available"
        storage.reserve(volume_id)
        storage.initialize_connection(volume_id, connector)
        with pytest.raises(errors.VolumeStateError):
            storage.attach(volume_id, self.INSTANCE, "/dev/vdb", connector["host"],
                           mode="xx")
        assert storage.get_volume(volume_id).status == "attaching"
        storage.terminate_connection(volume_id, connector)
        storage.unreserve(volume_id)
        assert statuses(storage, volume_id) == ("available", [])
