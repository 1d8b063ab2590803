"""File-backed Cinder volume driver for the attachflow lab.

Cinder's reference backend is LVM exported by a target helper (tgtadm).  The
lab machines have no device-mapper, so LVM volumes cannot be activated; this
driver keeps every volume as a sparse file and hands that file to the very
same target helper the LVM driver uses, so Cinder's own export, CHAP and
connection-info code stays in the loop.

This module is copied next to cinder-volume and loaded as
``volume_driver = attachflow_lab_driver.FileDriver``: it must import nothing
from attachflow.
"""

import os
import shutil

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils
from oslo_utils import units

from cinder import exception
from cinder.volume import driver

LOG = logging.getLogger(__name__)

file_opts = [
    cfg.StrOpt('lab_files_dir',
               default='$state_path/lab-files',
               help='Folder holding one sparse file per volume and snapshot.'),
    cfg.IntOpt('lab_capacity_gb',
               default=10240,
               help='Capacity reported to the scheduler; the files are '
                    'sparse, so this is a promise, not a reservation.'),
]

cfg.CONF.register_opts(file_opts, group='backend_defaults')


class FileDriver(driver.VolumeDriver):
    """Sparse files exported by Cinder's target helper."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'attachflow_lab'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'lab')
        helper = self.configuration.safe_get('target_helper')
        # Same construction as LVMVolumeDriver, so the export path is the
        # one a real deployment exercises.
        self.target_driver = importutils.import_object(
            self.target_mapping[helper],
            configuration=self.configuration,
            executor=self._execute)
        self.protocol = (self.target_driver.storage_protocol or
                         self.target_driver.protocol)

    @staticmethod
    def get_driver_options():
        return file_opts

    # ---- paths -----------------------------------------------------------

    @property
    def _dir(self):
        return self.configuration.lab_files_dir

    def local_path(self, volume):
        return os.path.join(self._dir, volume['name'])

    def _snapshot_path(self, snapshot):
        return os.path.join(self._dir, snapshot['name'])

    # ---- setup and stats -------------------------------------------------

    def do_setup(self, context):
        os.makedirs(self._dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.path.isdir(self._dir):
            raise exception.VolumeBackendAPIException(
                data='lab_files_dir %s does not exist' % self._dir)

    def _provisioned_gb(self):
        total = 0
        allocated = 0
        for entry in os.scandir(self._dir):
            if entry.is_file():
                st = entry.stat()
                total += st.st_size
                allocated += st.st_blocks * 512
        return total / units.Gi, allocated / units.Gi

    def _update_volume_stats(self):
        provisioned, allocated = self._provisioned_gb()
        capacity = self.configuration.lab_capacity_gb
        pool = {
            'pool_name': self.backend_name,
            'total_capacity_gb': capacity,
            'free_capacity_gb': round(capacity - allocated, 2),
            'provisioned_capacity_gb': round(provisioned, 2),
            'allocated_capacity_gb': round(allocated, 2),
            'reserved_percentage': 0,
            'max_over_subscription_ratio': 20.0,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'QoS_support': False,
            'multiattach': True,
            'total_volumes': sum(
                1 for e in os.scandir(self._dir)
                if e.name.startswith('volume-')),
            'location_info': 'FileDriver:%s' % self._dir,
            'backend_state': 'up',
        }
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'attachflow',
            'driver_version': self.VERSION,
            'storage_protocol': self.protocol,
            'shared_targets': False,
            'sparse_copy_volume': True,
            'pools': [pool],
        }

    def get_pool(self, volume):
        return self.backend_name

    # ---- volumes and snapshots -------------------------------------------

    @staticmethod
    def _make_sparse(path, size_gb):
        with open(path, 'xb') as f:
            f.truncate(int(size_gb) * units.Gi)

    def _copy_sparse(self, src, dst, size_gb):
        # cp keeps holes; a byte copy would allocate the whole volume.
        tmp = dst + '.part'
        try:
            self._execute('cp', '--sparse=always', src, tmp)
            with open(tmp, 'r+b') as f:
                if f.seek(0, os.SEEK_END) < int(size_gb) * units.Gi:
                    f.truncate(int(size_gb) * units.Gi)
            os.rename(tmp, dst)
        except Exception:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def create_volume(self, volume):
        self._make_sparse(self.local_path(volume), volume['size'])

    def delete_volume(self, volume):
        path = self.local_path(volume)
        if os.path.exists(path):
            os.unlink(path)
        else:
            LOG.info('Volume file %s already gone.', path)

    def extend_volume(self, volume, new_size):
        with open(self.local_path(volume), 'r+b') as f:
            f.truncate(int(new_size) * units.Gi)
        try:
            self.target_driver.extend_target(volume)
        except Exception:
            LOG.exception('Error extending target after volume resize.')
            raise exception.TargetUpdateFailed(volume_id=volume.id)

    def create_cloned_volume(self, volume, src_vref):
        self._copy_sparse(self.local_path(src_vref), self.local_path(volume),
                          volume['size'])

    def create_snapshot(self, snapshot):
        self._copy_sparse(self.local_path(snapshot.volume),
                          self._snapshot_path(snapshot),
                          snapshot['volume_size'])

    def delete_snapshot(self, snapshot):
        path = self._snapshot_path(snapshot)
        if os.path.exists(path):
            os.unlink(path)

    def create_volume_from_snapshot(self, volume, snapshot):
        self._copy_sparse(self._snapshot_path(snapshot),
                          self.local_path(volume), volume['size'])

    def revert_to_snapshot(self, context, volume, snapshot):
        self._copy_sparse(self._snapshot_path(snapshot),
                          self.local_path(volume) + '.revert',
                          volume['size'])
        shutil.move(self.local_path(volume) + '.revert',
                    self.local_path(volume))

    # ---- data path: delegated to the target helper -----------------------

    def ensure_export(self, context, volume):
        return self.target_driver.ensure_export(context, volume,
                                                self.local_path(volume))

    def create_export(self, context, volume, connector):
        export_info = self.target_driver.create_export(
            context, volume, self.local_path(volume))
        return {'provider_location': export_info['location'],
                'provider_auth': export_info['auth']}

    def remove_export(self, context, volume):
        self.target_driver.remove_export(context, volume)

    def initialize_connection(self, volume, connector):
        return self.target_driver.initialize_connection(volume, connector)

    def validate_connector(self, connector):
        return self.target_driver.validate_connector(connector)

    def terminate_connection(self, volume, connector, **kwargs):
        # Mirrors LVMVolumeDriver: with one target per volume the export must
        # stay while another attachment (a migration's second host, say)
        # still uses it; returning True tells the manager so.
        def same_connector(attach):
            return (attach.connector and
                    self.target_driver.are_same_connector(attach.connector,
                                                          connector))

        attachments = volume.volume_attachment
        if (volume.multiattach and
                sum(1 for a in filter(same_connector, attachments)) > 1):
            return True
        self.target_driver.terminate_connection(volume, connector, **kwargs)
        return len(attachments) > 1
