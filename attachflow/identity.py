"""Who attachflow is to the storage API: the user's credentials (a clouds.yaml cloud, the
OS_* variables, or noauth in labs), the service user's (for service tokens), and logging
in to Keystone with them.

Side effect owned: the login requests to Keystone. A refused login, or a Keystone that
cannot be reached, is told here in the words an operator needs (which Keystone, which
user and project, what to check); passwords and tokens never appear in them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Mapping

from attachflow import errors, timings
from attachflow.settings import env_value, request_timeout

if TYPE_CHECKING:
    from attachflow.token_cache import TokenCache


SERVICE_SETTINGS = ("--os-service-cloud / ATTACHFLOW_SERVICE_CLOUD, or OS_SERVICE_USERNAME, "
                    "OS_SERVICE_PASSWORD and OS_SERVICE_PROJECT_NAME")


def read_clouds_yaml_without_the_sdk() -> None:
    """For a process that runs attachflow alone (the command line): let
    ``openstack.config`` import without the ``openstack`` package's ``__init__``, which
    imports every service of the SDK (0.2 s of each command), where attachflow uses only
    the clouds.yaml reader. Not for a library caller's process: its own ``import
    openstack`` would find the package without its top-level names."""
    if "openstack" in sys.modules:
        return
    spec = importlib.util.find_spec("openstack")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed, or not a package: the import says so when it is needed
    sys.modules["openstack"] = importlib.util.module_from_spec(spec)


def _cloud(name: str, env: Mapping[str, str]):
    """One cloud of clouds.yaml; OS_CLIENT_CONFIG_FILE in ``env`` names the file first, as
    it does for the openstack CLI."""
    from openstack.config import loader  # lazily: only clouds need clouds.yaml parsing

    class SettingsConfig(loader.OpenStackConfig):
        """openstacksdk reads OS_CLIENT_CONFIG_FILE and OS_CLIENT_SECURE_FILE from the
        process's environment, which would put the process's clouds.yaml before the
        one ``env`` (a library caller's settings) names."""

        def _get_envvar(self, key, default=None):
            return env.get(key, default)

    files = None
    if env_value(env, "OS_CLIENT_CONFIG_FILE"):
        files = [env["OS_CLIENT_CONFIG_FILE"], *loader.CONFIG_FILES]
    # The cloud is named: the OS_* variables make no cloud of their own here.
    return SettingsConfig(config_files=files, load_envvars=False).get_one(cloud=name)


def _service_identity(service_cloud: str | None,
                      env: Mapping[str, str]) -> "Identity | None":
    """The service user, or None: from a second clouds.yaml cloud, or from OS_SERVICE_*
    variables (auth URL and domains default to the user's)."""
    service_cloud = service_cloud or env_value(env, "ATTACHFLOW_SERVICE_CLOUD")
    if service_cloud:
        try:
            region = _cloud(service_cloud, env)
            return Identity.of("service user", region.get_auth(), region.auth,
                               f"cloud '{service_cloud}'")
        except errors.AttachflowError:
            raise
        except Exception as exc:
            raise errors.InputError(f"service cloud '{service_cloud}': {exc}") from exc
    if not (env_value(env, "OS_SERVICE_USERNAME") or env_value(env, "OS_SERVICE_USER_ID")):
        return None
    from keystoneauth1 import loading
    loader = loading.get_plugin_loader("password")
    options = {}
    for opt in loader.get_options():
        name = opt.dest.upper()
        value = env_value(env, f"OS_SERVICE_{name}")
        # The Keystone and the domains are the user's unless the service's are given (a
        # domain by name or by id: one of them, not a mix of the two users' settings).
        domain = name.rsplit("_", 1)[0] if "_DOMAIN_" in name else None
        own_domain = domain and any(env_value(env, f"OS_SERVICE_{domain}_{kind}")
                                    for kind in ("NAME", "ID"))
        if value is None and (name == "AUTH_URL" or domain and not own_domain):
            value = env_value(env, f"OS_{name}")
        if value is not None:
            options[opt.dest] = value
    missing = [f"OS_SERVICE_{n}" for n in ("AUTH_URL", "PASSWORD") if n.lower() not in options]
    if not (options.get("project_name") or options.get("project_id")):
        missing.append("OS_SERVICE_PROJECT_NAME")
    if missing:
        raise errors.InputError("service credentials incomplete: set " + ", ".join(missing))
    return Identity.of("service user", loader.load_from_options(**options), options,
                       "OS_SERVICE_*")


def _with_service_token(user_auth, service: "Identity | None"):
    """Requests carry the user's token and, in X-Service-Token, the service user's."""
    if service is None:
        return user_auth
    from keystoneauth1 import service_token
    return service_token.ServiceTokenAuthWrapper(user_auth=user_auth,
                                                 service_auth=service.plugin)


@dataclasses.dataclass(frozen=True)
class Identity:
    """One user attachflow logs in as: the keystoneauth plugin, and how to name the user
    in a message (never with its password)."""
    role: str            # "user" or "service user"
    plugin: Any
    auth_url: str
    label: str           # user 'x' in project 'y' (cloud 'z')

    @classmethod
    def of(cls, role: str, plugin: Any, options: Mapping[str, Any],
           source: str) -> "Identity":
        user = options.get("username") or options.get("user_id") or "?"
        project = options.get("project_name") or options.get("project_id")
        where = f" in project '{project}'" if project else ""
        return cls(role, plugin, str(options.get("auth_url") or "?"),
                   f"{role} '{user}'{where} ({source})")


@dataclasses.dataclass(frozen=True)
class StorageSession:
    """A session to the storage API and who it logs in as."""
    session: Any
    endpoint: str | None          # a cloud's block-storage endpoint, else the catalog's
    identities: tuple[Identity, ...]   # empty under noauth
    service_token: bool           # requests carry a service's identity (token or noauth)
    tokens: "TokenCache | None" = None   # tokens kept between commands
    # per user (by label): the token stored for the next command, as this one knows it
    _stored: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def log_in(self) -> None:
        """Have every user's token now (the stored one, or a new login), so that a refused
        login names the user."""
        for identity in self.identities:
            if self._reuse(identity):
                continue
            try:
                with timings.phase("keystone", f"login of {identity.label}"):
                    identity.plugin.get_token(self.session)
            except Exception as exc:
                raise login_error(exc, identity) from exc
            self.keep_tokens(only=identity)

    def _reuse(self, identity: Identity) -> bool:
        """Whether ``identity`` goes on with a token a command before this one stored,
        its catalog read again when it is older than the cache allows."""
        if self.tokens is None:
            return False
        with timings.phase("keystone", f"stored token of {identity.label}"):
            restored = self.tokens.restore(identity.plugin)
        self._stored[identity.label] = restored
        if not restored.used:
            return False
        # Only the user's catalog finds endpoints; the service token is a header.
        if identity.role == "user" and self.tokens.catalog_stale(restored):
            with timings.phase("keystone", f"catalog of {identity.label}"):
                known = _read_token_again(self.session, identity)
            if not known:
                self.tokens.forget(identity.plugin)
                return False
            self._stored[identity.label] = self.tokens.save(identity.plugin, restored,
                                                            catalog_read=True)
        return True

    def keep_tokens(self, only: Identity | None = None) -> None:
        """Store each user's token as it is now, for the next command (a new login
        replaces the stored token, a failed one removes it)."""
        if self.tokens is None:
            return
        from attachflow.token_cache import Restored
        for identity in self.identities if only is None else (only,):
            known = self._stored.get(identity.label, Restored(False, None, 0.0))
            self._stored[identity.label] = self.tokens.save(identity.plugin, known)


def _read_token_again(session: Any, identity: Identity) -> bool:
    """Ask Keystone for the token's own data again (its catalog, roles and expiry) with
    the token itself: one validation, no login. False when Keystone no longer knows the
    token (revoked, expired, or the user's password changed)."""
    from keystoneauth1 import access
    from keystoneauth1 import exceptions as kexc
    token = identity.plugin.auth_ref.auth_token
    url = identity.auth_url.rstrip("/")
    if not url.endswith("/v3"):
        url += "/v3"
    try:
        resp = session.get(f"{url}/auth/tokens", authenticated=False,
                           headers={"X-Auth-Token": token, "X-Subject-Token": token})
        identity.plugin.auth_ref = access.create(resp=resp, auth_token=token)
        return True
    except (kexc.NotFound, kexc.Unauthorized):
        identity.plugin.set_auth_state(None)
        return False
    except Exception as exc:
        raise login_error(exc, identity) from exc


def login_error(exc: BaseException, identity: "Identity | None" = None) -> errors.StorageError:
    """A failed login to Keystone, in an operator's words: which Keystone, which user,
    and what went wrong, without urllib3's retry story."""
    from keystoneauth1 import exceptions as kexc
    who = f" of {identity.label}" if identity else ""
    text = str(exc)
    if identity:
        url = identity.auth_url
    else:
        # HTTP errors carry the URL; connection errors only name it in their text
        found = getattr(exc, "url", None) or (re.findall(r"https?://[^\s'\"]+", text) or
                                              ["?"])[0]
        url = found.split("/auth/tokens", 1)[0].rstrip(":")
    if isinstance(exc, kexc.http.HttpError):
        code = exc.http_status
        if code in (401, 403):
            return errors.AuthError(
                f"Keystone at {url} refused the login{who} (HTTP "
                f"{code}): a wrong password, an unknown or disabled user or project, or no "
                "role on that project", status=code)
        return errors.KeystoneUnavailable(f"Keystone at {url} failed the login{who} "
                                          f"(HTTP {code})", status=code)
    if isinstance(exc, (kexc.ConnectionError, kexc.DiscoveryFailure)):
        # "[Errno 111] Connection refused", "timed out", ... is what an operator needs
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        reason = errno[1] if errno else (
            "timed out" if isinstance(exc, kexc.ConnectTimeout) or "timed out" in text
            else type(exc).__name__)
        return errors.KeystoneUnavailable(f"cannot reach Keystone at {url} ({reason})")
    return errors.StorageError(f"the login{who} to Keystone at {url} failed: "
                               f"{type(exc).__name__}: {text}")


def make_session(cloud: str | None = None, env: Mapping[str, str] | None = None,
                 service_cloud: str | None = None):
    """(session, endpoint or None): see ``open_session``."""
    opened = open_session(cloud, env, service_cloud)
    return opened.session, opened.endpoint


def open_session(cloud: str | None = None, env: Mapping[str, str] | None = None,
                 service_cloud: str | None = None,
                 tokens: "TokenCache | None" = None) -> StorageSession:
    """A keystoneauth1 session from a clouds.yaml cloud, the OS_* variables, or noauth.

    noauth (labs): OS_AUTH_TYPE=noauth with OS_ENDPOINT, OS_USER_ID, OS_PROJECT_ID.
    Every request times out after ATTACHFLOW_STORAGE_TIMEOUT seconds (default 30), and a
    call's retries stop after ATTACHFLOW_STORAGE_DEADLINE (default 60): a storage API
    that stops answering must not hang an attach. ``tokens``: where logins are kept
    between commands (none: every command logs in).
    """
    env = os.environ if env is None else env
    cloud = cloud or env_value(env, "OS_CLOUD")
    timeout = request_timeout(env)
    if cloud:
        return _cloud_session(cloud, env, service_cloud, timeout, tokens)

    from keystoneauth1 import session as ks_session
    auth_type, options, plugin = _plugin_from_env(env)
    verify: bool | str = not bool(env_value(env, "OS_INSECURE"))
    if env_value(env, "OS_CACERT"):
        verify = env["OS_CACERT"]
    headers = {}
    identities: tuple[Identity, ...] = ()
    if auth_type == "noauth":
        # Without a service role, Cinder asks Nova before deleting an attachment that
        # names an instance, and fails where there is no Nova. In noauth nothing checks
        # the role (and there is no token to vouch for it); with Keystone, the role
        # comes from a service token.
        headers["X-Service-Roles"] = "service"
        service_token = True
    else:
        service = _service_identity(service_cloud, env)
        identities = (Identity.of("user", plugin, options, "OS_* variables"),
                      *([service] if service else []))
        plugin = _with_service_token(plugin, service)
        service_token = service is not None
    return StorageSession(
        ks_session.Session(auth=plugin, verify=verify, additional_headers=headers,
                           timeout=timeout), None, identities, service_token,
        tokens if identities else None)


def _cloud_session(cloud: str, env: Mapping[str, str], service_cloud: str | None,
                   timeout: float, tokens: "TokenCache | None") -> StorageSession:
    """``open_session`` from a clouds.yaml cloud."""
    try:
        region = _cloud(cloud, env)
        sess = region.get_session()
    except Exception as exc:
        raise errors.InputError(f"cloud '{cloud}': {exc}") from exc
    sess.timeout = timeout
    user = Identity.of("user", sess.auth, region.auth, f"cloud '{cloud}'")
    service = _service_identity(service_cloud, env)
    sess.auth = _with_service_token(sess.auth, service)
    return StorageSession(sess, region.get_endpoint("block-storage"),
                          (user, *([service] if service else [])), service is not None,
                          tokens)


def _plugin_from_env(env: Mapping[str, str]) -> tuple[str, dict[str, Any], Any]:
    """(auth type, options, keystoneauth plugin) from the OS_* variables."""
    from keystoneauth1 import loading
    auth_type = env_value(env, "OS_AUTH_TYPE") or ("noauth" if env_value(env, "OS_ENDPOINT")
                                              and not env_value(env, "OS_AUTH_URL")
                                              else "password")
    try:
        loader = loading.get_plugin_loader(auth_type)
    except Exception as exc:
        raise errors.InputError(f"unknown OS_AUTH_TYPE '{auth_type}'") from exc
    options = {}
    for opt in loader.get_options():
        value = env_value(env, "OS_" + opt.dest.upper()) or env_value(env, "OS_" + opt.name.upper()
                                                             .replace("-", "_"))
        if value is not None:
            options[opt.dest] = value
    missing = [o.name for o in loader.get_options() if o.required and o.dest not in options]
    if missing:
        raise errors.InputError(
            "storage credentials incomplete: set "
            + ", ".join("OS_" + m.upper().replace("-", "_") for m in missing)
            + " (or --os-cloud / OS_CLOUD)")
    return auth_type, options, loader.load_from_options(**options)
