"""Keystone logins kept between commands: each user's token (the member's and the service
user's) is stored in the state directory and reused by the next command until shortly
before it expires, so that a hook called for every volume does not log in every time,
and Cinder, which has validated that token already, answers from its own cache.

Side effect owned: the files under ``<state dir>/tokens/`` (readable by their owner only;
a token is a credential and is never printed). One file per user, named after
keystoneauth's cache id of the user's plugin, which covers the Keystone, the user, the
project and the password: another cloud, user or password never finds another's token.

What keeps a reused token honest:
- keystoneauth logs in again when the token has less than two minutes left, and when
  the storage API refuses it (HTTP 401: revoked, or the password changed); the new
  token replaces the stored one, and a login that fails removes it.
- The catalog stored with a token goes stale (the reason python-openstackclient never
  enabled its cache): a stored catalog older than ``CATALOG_TTL`` is read again from
  Keystone with the same token (one validation, no login), and a token Keystone no
  longer knows is dropped and replaced by one new login.
- ``ATTACHFLOW_TOKEN_CACHE=off`` turns the cache off; nothing is read or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from attachflow.settings import env_value

LOG = logging.getLogger("attachflow.tokens")

# As long as Cinder's own default trust in a validated token (keystonemiddleware's
# token_cache_time): a catalog is never older than a token Cinder would accept.
CATALOG_TTL = 300.0
SETTING = "ATTACHFLOW_TOKEN_CACHE"
OFF_VALUES = ("off", "0", "no", "false")


def enabled(env: Mapping[str, str]) -> bool:
    value = env_value(env, SETTING)
    if value is None or value.lower() in ("on", "1", "yes", "true"):
        return True
    if value.lower() in OFF_VALUES:
        return False
    from attachflow import errors
    raise errors.InputError(f"{SETTING} '{value}' is not one of on, off")


@dataclasses.dataclass
class Restored:
    """What a command found for one user: whether a stored token was installed in its
    plugin, and the token it started with (to tell later whether it changed)."""
    used: bool
    token: str | None
    catalog_at: float


# The token cache's directory under attachflow's state directory.
DIRECTORY = "tokens"


class TokenCache:
    """The stored tokens of one state directory."""

    def __init__(self, directory: Path, clock=time.time) -> None:
        self.directory = directory
        self._clock = clock

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TokenCache | None":
        if not enabled(env):
            return None
        from attachflow.journal import state_dir
        return cls(state_dir(env) / DIRECTORY)

    # -- one user's file ------------------------------------------------------------------
    @staticmethod
    def _cache_id(plugin: Any) -> str | None:
        try:
            return plugin.get_cache_id()
        except (AttributeError, NotImplementedError):
            return None  # a plugin keystoneauth cannot name: never cached

    def _file(self, plugin: Any) -> Path | None:
        cache_id = self._cache_id(plugin)
        if not cache_id:
            return None
        # keystoneauth's id is base64 (with '/' in it): its digest makes a file name
        return self.directory / f"{hashlib.sha256(cache_id.encode()).hexdigest()}.json"

    def restore(self, plugin: Any) -> Restored:
        """Install the stored token in ``plugin`` when there is one it can use."""
        file = self._file(plugin)
        if file is None:
            return Restored(False, None, 0.0)
        try:
            stored = json.loads(file.read_text())
            plugin.set_auth_state(stored["state"])
            catalog_at = float(stored["catalog_at"])
        except FileNotFoundError:
            return Restored(False, None, 0.0)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOG.debug("tokens: a stored token could not be read (%s); logging in",
                      type(exc).__name__)
            plugin.set_auth_state(None)
            return Restored(False, None, 0.0)
        if plugin.auth_ref is None or plugin.auth_ref.will_expire_soon(
                plugin.MIN_TOKEN_LIFE_SECONDS):
            plugin.set_auth_state(None)   # expired or about to: keystoneauth logs in
            return Restored(False, None, 0.0)
        return Restored(True, plugin.auth_ref.auth_token, catalog_at)

    def catalog_stale(self, restored: Restored) -> bool:
        return restored.used and self._clock() - restored.catalog_at > CATALOG_TTL

    def save(self, plugin: Any, known: Restored, catalog_read: bool = False) -> Restored:
        """Store the plugin's token as it is now, and return what is stored: a token
        other than ``known`` (a new login) or a catalog read again is written, no token
        (a login that failed, a token invalidated) removes the file."""
        file = self._file(plugin)
        token = plugin.auth_ref.auth_token if plugin.auth_ref else None
        if file is None or token is None:
            if file is not None:
                with contextlib.suppress(OSError):
                    file.unlink()
            return Restored(False, None, 0.0)
        if token == known.token and not catalog_read:
            return known
        now = self._clock()
        self._write(file, json.dumps({"state": plugin.get_auth_state(), "catalog_at": now}))
        return Restored(True, token, now)

    def forget(self, plugin: Any) -> None:
        file = self._file(plugin)
        if file is not None:
            with contextlib.suppress(OSError):
                file.unlink()

    def _write(self, file: Path, text: str) -> None:
        """Atomically, readable by the owner only; a full disk or a read-only state
        directory costs the next command a login, never this command its result."""
        from attachflow.journal import private_dir
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        try:
            private_dir(self.directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, file)
        except OSError as exc:
            LOG.debug("tokens: not stored (%s)", exc.strerror or type(exc).__name__)
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._prune()

    def _prune(self) -> None:
        """Remove tokens that have expired (a changed password leaves its old file)."""
        from keystoneauth1 import access
        for file in self.directory.glob("*.json"):
            try:
                stored = json.loads(file.read_text())
                state = json.loads(stored["state"])
                ref = access.create(body=state["body"], auth_token=state["auth_token"])
                if not ref.will_expire_soon(0):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                pass
            with contextlib.suppress(OSError):
                file.unlink()
