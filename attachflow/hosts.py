"""The hosts file: which compute hosts there are and how to reach them.

The side effect owned here is reading the hosts file (TOML, ``ATTACHFLOW_HOSTS`` or
``~/.config/attachflow/hosts.toml``). A host is ``local`` (this machine) or a name from
that file; a bare name not in the file means root over SSH to that name and
``qemu+ssh://root@NAME/system``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from attachflow import errors

LOCAL = "local"
LOCAL_URI = "qemu:///system"


@dataclasses.dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    known_hosts: str | None = None
    libvirt_uri: str = "qemu:///system"
    remote_command: str = "attachflow"
    hostname: str | None = None  # what the storage side is told (connector 'host')

    @property
    def local(self) -> bool:
        return self.name == LOCAL

    @property
    def connector_host(self) -> str:
        return self.hostname or (socket.gethostname() if self.local else self.name)


def hosts_file_path(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("ATTACHFLOW_HOSTS"):
        return Path(env["ATTACHFLOW_HOSTS"])
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "attachflow" / \
        "hosts.toml"


_HOST_KEYS = {f.name for f in dataclasses.fields(HostConfig)} - {"name"}


def load_host(name: str, env=None) -> HostConfig:
    path = hosts_file_path(env)
    entries: dict[str, Any] = {}
    if path.exists():
        try:
            entries = tomllib.loads(path.read_text()).get("hosts", {})
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise errors.InputError(f"hosts file {path}: {exc}") from None
    if name in entries:
        entry = dict(entries[name])
        unknown = set(entry) - _HOST_KEYS
        if unknown:
            raise errors.InputError(
                f"hosts file {path}: host '{name}' has unknown keys {sorted(unknown)}")
        entry.setdefault("address", name)
        entry.setdefault("libvirt_uri", LOCAL_URI if name == LOCAL else
                         f"qemu+ssh://{entry.get('ssh_user', 'root')}@{entry['address']}/system")
        return HostConfig(name=name, **entry)
    if name == LOCAL:
        return HostConfig(name=LOCAL, address=local_address(), libvirt_uri=LOCAL_URI)
    if not name or any(c in name for c in " /@:"):
        raise errors.UnknownHost(f"'{name}' is not a host name")
    return HostConfig(name=name, address=name, libvirt_uri=f"qemu+ssh://root@{name}/system")


def local_address() -> str:
    """This machine's address as its own name resolves; loopback if it does not resolve."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

