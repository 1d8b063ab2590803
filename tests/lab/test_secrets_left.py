"""After the lab suite (conftest runs this after the others but the up/down cycles,
which tear the lab down): none of the CHAP passwords or Keystone passwords the suite used, and
no Keystone token, appears in any output of the attachflow command, in the operations
journal, or in any log or file the suite leaves -- except the stores whose job is to
keep them: Keystone's password and cloud files, Cinder's own configuration and target
files, libvirt's secrets directory, the databases."""

from __future__ import annotations

import os
from pathlib import Path

import secrets_seen

from attachflow import token_cache

# Fernet tokens, whoever issued them, start so.
TOKEN_PREFIX = "gAAAAA"
# Where secrets belong, relative to the lab's state directory.
STORES = ("keystone/passwords.json", "keystone/clouds.yaml", "keystone/openrc",
          "keystone/fernet-keys/", "keystone/credential-keys/", "cinder/cinder.conf",
          "cinder/volumes/", "mysql/", "rabbitmq/", "/etc-libvirt/secrets/")
# Disk images of the compute-node VMs: whole file systems, searched on the nodes' own
# logs instead (journald files are under var/log in the overlay, not readable here).
SKIPPED_SUFFIXES = (".qcow2", ".whl", ".img", ".so")


def files_left(state: Path):
    for root, _dirs, names in os.walk(state):
        for name in names:
            path = Path(root) / name
            rel = str(path.relative_to(state))
            if any(store in "/" + rel if store.startswith("/") else rel.startswith(store)
                   for store in STORES) or name.endswith(SKIPPED_SUFFIXES) \
                    or "site-packages" in rel or not path.is_file():
                continue
            if path.stat().st_size > 64 << 20:
                continue
            yield rel, path.read_bytes()


def test_no_secret_is_left_in_outputs_logs_or_files(lab):
    secrets_seen.gather(lab.state)
    secrets = sorted(secrets_seen.SECRETS)
    assert len(secrets) >= 5, "the suite used Keystone's and at least some CHAP passwords"
    assert len(secrets_seen.OUTPUTS) > 50
    found = []
    for number, text in enumerate(secrets_seen.OUTPUTS):
        for secret in secrets + [TOKEN_PREFIX]:
            if secret in text:
                found.append((f"output #{number}", secret[:3] + "..."))
    searched = token_files = 0
    for rel, data in files_left(lab.state):
        searched += 1
        # The token cache is where Keystone tokens belong, readable by its owner only; a
        # password has no place there either.
        in_token_cache = Path(rel).parent.name == token_cache.DIRECTORY
        if in_token_cache:
            token_files += 1
            path = lab.state / rel
            assert path.stat().st_mode & 0o777 == 0o600, rel
            assert path.parent.stat().st_mode & 0o777 == 0o700, rel
        for secret in secrets + ([] if in_token_cache else [TOKEN_PREFIX]):
            if secret.encode() in data:
                found.append((rel, secret[:3] + "..."))
    assert searched > 30
    assert token_files >= 1, "the token cache was searched"
    journal = Path(os.environ["ATTACHFLOW_STATE_DIR"])
    assert any(journal.iterdir()), "the journal was searched"
    assert found == [], found
