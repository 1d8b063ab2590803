"""The hosts file: which compute hosts there are and how to reach them.

The side effects owned here are reading the hosts file (TOML, ``ATTACHFLOW_HOSTS`` or
``~/.config/attachflow/hosts.toml``) and writing the small ssh wrapper that makes
libvirt's own ssh use the entry's known-hosts file. The file is checked as a whole
against its schema when it is read: a wrong type, an unknown key or a missing address is
one error naming the file, the line, the host and the key.

A host is ``local`` (this machine), a name from that file, or an explicit
``USER@ADDRESS`` (SSH as USER, libvirt over ``qemu+ssh``). Any other name is refused:
a typo must not become a connection to somewhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import socket
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from attachflow import errors, timings
from attachflow.model import shown

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
    # How the source host's libvirtd reaches this host's in a live migration (peer to
    # peer), when that differs from how attachflow reaches it: ssh keys, known hosts and
    # wrappers named in libvirt_uri exist where attachflow runs, not on the other hosts.
    migration_uri: str | None = None
    remote_command: str = "attachflow"
    hostname: str | None = None  # what the storage side is told (connector 'host')
    # Seconds to open the SSH connection, and for one command on the host (an os-brick
    # login retries a slow target for a couple of minutes before it gives up).
    connect_timeout: float = 10.0
    command_timeout: float = 300.0
    # What `attachflow boot` boots on this host when no --kernel/--initrd/--cmdline is
    # given: paths on the host itself, which one setting for every host cannot name.
    boot_kernel: str | None = None
    boot_initrd: str | None = None
    boot_cmdline: str | None = None

    @property
    def inbound_migration_uri(self) -> str:
        return self.migration_uri or self.libvirt_uri

    @property
    def local(self) -> bool:
        return self.name == LOCAL

    @property
    def connector_host(self) -> str:
        return self.hostname or (socket.gethostname() if self.local else self.name)


# The schema of one entry: key -> (type, required, what a valid value is).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$")
_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "address": (str, "a host name or IP address"),
    "ssh_user": (str, "a user name"),
    "ssh_port": (int, "a port number from 1 to 65535"),
    "ssh_key": (str, "a path"),
    "known_hosts": (str, "a path"),
    "libvirt_uri": (str, "a libvirt URI"),
    "migration_uri": (str, "a libvirt URI"),
    "remote_command": (str, "a command line"),
    "hostname": (str, "a host name"),
    "connect_timeout": ((int, float), "a number of seconds from 1 to 300"),
    "command_timeout": ((int, float), "a number of seconds from 1 to 86400"),
    "boot_kernel": (str, "an absolute path on the host"),
    "boot_initrd": (str, "an absolute path on the host"),
    "boot_cmdline": (str, "a kernel command line"),
}
_SECONDS = {"connect_timeout": 300, "command_timeout": 86400}


def hosts_file_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("ATTACHFLOW_HOSTS"):
        return Path(env["ATTACHFLOW_HOSTS"])
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "attachflow" / \
        "hosts.toml"


def load_hosts(env: Mapping[str, str] | None = None) -> dict[str, HostConfig]:
    """Every host of the hosts file, checked; {} when there is no file."""
    with timings.phase("configuration", "hosts file"):
        return _load_hosts(env)


def _load_hosts(env: Mapping[str, str] | None) -> dict[str, HostConfig]:
    path = hosts_file_path(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise errors.InputError(f"hosts file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message may quote the offending text: one printable line of it
        raise errors.InputError(f"hosts file {path}: not valid TOML: "
                                f"{shown(str(exc), 200)[1:-1]}") from exc
    where = _Locator(path, text)
    extra = sorted(set(data) - {"hosts"})
    if extra:
        raise where.error(None, extra[0], "unknown top-level key (expected [hosts.NAME] "
                                          "tables)")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise where.error(None, "hosts", "must be a table of [hosts.NAME] entries")
    return {name: _entry(where, name, entry) for name, entry in hosts.items()}


def load_host(name: str, env: Mapping[str, str] | None = None) -> HostConfig:
    """``name`` resolved: ``local``, an entry of the hosts file, or ``USER@ADDRESS``."""
    hosts = load_hosts(env)
    if name in hosts:
        cfg = hosts[name]
        # the wrapper its libvirt URI names (an explicit libvirt_uri names none)
        if cfg.known_hosts and str(_wrapper_path(cfg.known_hosts)) in \
                urllib.parse.unquote(cfg.libvirt_uri):
            _write_ssh_wrapper(os.path.expanduser(cfg.known_hosts))
        return cfg
    if name == LOCAL:
        return HostConfig(name=LOCAL, address=local_address(), libvirt_uri=LOCAL_URI)
    user, at, address = (name or "").partition("@")
    if at:
        if not _USER.fullmatch(user) or not _ADDRESS.fullmatch(address):
            raise errors.UnknownHost(f"'{name}' is not USER@ADDRESS")
        return HostConfig(name=address, address=address, ssh_user=user,
                          libvirt_uri=ssh_uri(user, address, 22, None, None))
    known = ", ".join(sorted(set(hosts) | {LOCAL}))
    raise errors.UnknownHost(f"unknown host '{name}'; known: {known} (hosts file "
                             f"{hosts_file_path(env)}; or give USER@ADDRESS)")


def ssh_uri(user: str, address: str, port: int, key: str | None,
            known_hosts: str | None) -> str:
    """libvirt's qemu+ssh URI with the same user, port, key and known hosts that
    attachflow's own SSH uses."""
    host = f"[{address}]" if ":" in address else address
    netloc = f"{user}@{host}" + (f":{port}" if port != 22 else "")
    params = [("no_tty", "1")]
    if key:
        params.append(("keyfile", os.path.expanduser(key)))
    if known_hosts:
        # libvirt's ssh transport takes no known-hosts file: hand it an ssh that does
        params.append(("command", str(_wrapper_path(known_hosts))))
    return f"qemu+ssh://{netloc}/system?{urllib.parse.urlencode(params, safe='/')}"


def _wrapper_path(known_hosts: str) -> Path:
    """Where the ``ssh`` that checks host keys against ``known_hosts`` only lives."""
    known_hosts = os.path.expanduser(known_hosts)
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache") / "attachflow"
    return base / f"ssh-{hashlib.sha256(known_hosts.encode()).hexdigest()[:16]}"


def _write_ssh_wrapper(known_hosts: str) -> Path:
    """Write that ``ssh`` (once: only when it is missing or differs); only for the
    host a command uses, not for every entry of the file."""
    wrapper = _wrapper_path(known_hosts)
    body = ("#!/bin/sh\n# made by attachflow for libvirt's qemu+ssh: host keys from "
            f"{shlex.quote(known_hosts)} only\n"
            f"exec ssh -o UserKnownHostsFile={shlex.quote(known_hosts)} "
            "-o StrictHostKeyChecking=yes -o ConnectTimeout=10 \"$@\"\n")
    if not wrapper.exists() or wrapper.read_text() != body:
        wrapper.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = wrapper.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.chmod(0o700)
        tmp.replace(wrapper)
    return wrapper


def local_address() -> str:
    """This machine's address as its own name resolves; loopback if it does not resolve."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class _Locator:
    """Names the line of a host's entry or key in the file's text, for errors."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()

    def _line(self, host: str | None, key: str | None) -> int | None:
        """The line of ``key`` in ``host``'s entry, of the entry's header, or of a
        top-level key (a plain assignment or a table named after it)."""
        if host is None:
            wanted = re.compile(rf'^(\[+\s*"?{re.escape(key or "")}"?\s*[.\]]|'
                                rf'"?{re.escape(key or "")}"?\s*=)')
            return next((n for n, line in enumerate(self.lines, 1)
                         if wanted.match(line.strip())), None)
        in_entry, header = False, None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                in_entry = stripped.strip("[]").strip().replace('"', "") == f"hosts.{host}"
                header = number if in_entry else header
                if in_entry and key is None:
                    return number
            elif in_entry and key and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
                return number
        if header is None:  # an entry written as a plain key of [hosts]
            return next((n for n, line in enumerate(self.lines, 1)
                         if re.match(rf'^"?{re.escape(host)}"?\s*=', line.strip())), None)
        return header

    def error(self, host: str | None, key: str | None, problem: str) -> errors.InputError:
        line = self._line(host, key)
        where = f"hosts file {self.path}" + (f", line {line}" if line else "")
        subject = ", ".join(part for part in (
            f"host {shown(host)}" if host is not None else "",
            f"key {shown(key)}" if key else "") if part)
        return errors.InputError(f"{where}: {subject}: {problem}")


def _entry(where: _Locator, name: str, entry: Any) -> HostConfig:
    if not _NAME.fullmatch(name):
        raise where.error(name, None, "host names are letters, digits, '_', '.', '-'")
    if not isinstance(entry, dict):
        raise where.error(name, None, "must be a table ([hosts.NAME])")
    for key, value in entry.items():
        if key not in _SCHEMA:
            raise where.error(name, key, f"unknown key (known: {', '.join(_SCHEMA)})")
        kind, meaning = _SCHEMA[key]
        valid = isinstance(value, kind) and not isinstance(value, bool)
        if valid and key == "ssh_port":
            valid = 1 <= value <= 65535
        elif valid and key == "ssh_user":
            valid = bool(_USER.fullmatch(value))
        elif valid and key in ("address", "hostname"):
            valid = bool(_ADDRESS.fullmatch(value))
        elif valid and key in _SECONDS:
            valid = 1 <= value <= _SECONDS[key]  # NaN and infinity fail this too
        elif valid and key in ("boot_kernel", "boot_initrd"):
            valid = value.startswith("/")
        elif valid:
            valid = bool(value.strip())
        if not valid:
            raise where.error(name, key, f"must be {meaning}, not {shown(value)}")
    if "address" not in entry and name != LOCAL:
        raise where.error(name, "address", "missing (the host's name or IP address)")
    cfg = dict(entry)
    cfg.setdefault("address", local_address())
    if "libvirt_uri" not in cfg:
        cfg["libvirt_uri"] = LOCAL_URI if name == LOCAL else ssh_uri(
            cfg.get("ssh_user", "root"), cfg["address"], cfg.get("ssh_port", 22),
            cfg.get("ssh_key"), cfg.get("known_hosts"))
    return HostConfig(name=name, **cfg)
