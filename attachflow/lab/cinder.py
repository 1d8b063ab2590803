"""OpenStack Cinder: its configuration and database (``cinder-db``) and its three services.

Side effects owned: cinder.conf and the lab's volume driver in the state dir, the
``cinder`` database, and the cinder-api, cinder-scheduler and cinder-volume daemons.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from attachflow.lab import layout, mariadb
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import port_open, run
from attachflow.lab.supervision import Program


def conf_path() -> Path:
    return layout.path("cinder", "cinder.conf")


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(layout.path("cinder", "driver")),
            "HOME": str(layout.path("cinder"))}


# How long cinder-api trusts a token it validated, as production's keystonemiddleware
# does by default. A test of revocation shortens it for its own run
# (``token_cache_time``): with the default, a revoked token keeps working at Cinder for
# five minutes.
DEFAULT_TOKEN_CACHE_TIME = 300


def _token_cache_file() -> Path:
    return layout.path("cinder", "token-cache-time")


def _auth_values() -> dict[str, str]:
    if layout.auth_mode() == "noauth":
        return {"auth_strategy": "noauth", "auth_sections": ""}
    from attachflow.lab import keystone
    cache_time = layout.load_json(_token_cache_file(), DEFAULT_TOKEN_CACHE_TIME)
    return {"auth_strategy": "keystone",
            "auth_sections": layout.render_text(
                "cinder-keystone.conf", cinder_user=keystone.CINDER.user,
                cinder_password=keystone.passwords(draw=True)[keystone.CINDER.user],
                cinder_project=keystone.CINDER.project, domain=keystone.DOMAIN,
                token_cache_time=str(int(cache_time)))}


def _render_conf() -> None:
    db = (f"mysql+pymysql://root@localhost/cinder?unix_socket={mariadb.socket_path()}"
          "&charset=utf8")
    layout.render("cinder.conf", conf_path(), 0o600, database_url=db,
                  helper=f"{layout.VENV}/bin/privsep-helper --config-file {conf_path()}",
                  **_auth_values())


def token_cache_time(seconds: int | None, timeout: float = 90) -> None:
    """Make the running lab's cinder-api trust a validated token for ``seconds`` (None:
    production's default again): cinder.conf is written anew and cinder-api restarted,
    which also empties its cache of validated tokens. Returns once the API answers."""
    if layout.auth_mode() == "noauth":
        raise LabError("the lab runs with noauth: Cinder validates no token")
    if seconds is None:
        _token_cache_file().unlink(missing_ok=True)
    else:
        layout.write(_token_cache_file(), f"{int(seconds)}\n", 0o600)
    _render_conf()
    from attachflow.lab.component import Lab
    lab = Lab()
    lab.supervisor.stop("cinder-api")
    lab.supervisor.start("cinder-api")
    deadline = time.monotonic() + timeout
    while True:
        try:
            api("os-services")
            return
        except LabError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _credentials() -> tuple[str, str]:
    """(token, project id) for the lab's own look at Cinder: its admin under Keystone."""
    if layout.auth_mode() == "noauth":
        return f"{layout.LAB_USER_ID}:{layout.LAB_PROJECT_ID}", layout.LAB_PROJECT_ID
    from keystoneauth1 import exceptions as kexc
    from attachflow.lab import keystone
    sess = keystone.session()
    try:
        return sess.get_token(), sess.get_project_id()
    except kexc.ClientException as e:
        raise LabError(f"keystone: {e}") from e


def api(path: str, timeout: float = 5) -> dict[str, Any]:
    """GET one path of the lab's Cinder API as the lab's admin."""
    token, project = _credentials()
    req = urllib.request.Request(
        f"{layout.cinder_endpoint()}/{project}/{path}",
        headers={"X-Auth-Token": token,
                 "Accept": "application/json", "OpenStack-API-Version": "volume 3.0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LabError(f"cinder-api {path}: {e}") from e


def services() -> dict[tuple[str, str], dict[str, Any]]:
    """os-services records by (binary, host)."""
    return {(s["binary"], s["host"]): s for s in api("os-services")["services"]}


class CinderDB(Component):
    """cinder.conf, the volume driver and the database schema the services share."""
    name = "cinder-db"
    requires = ("mariadb",)
    pip_packages = ("cinder", "python-cinderclient", "PyMySQL")

    def up(self, lab: Lab) -> None:
        cdir = layout.path("cinder")
        for sub in ("lock", "files", "volumes", "driver", "coordination"):
            (cdir / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("cinder_driver.py"),
                        cdir / "driver" / "attachflow_lab_driver.py")
        _render_conf()
        marker = cdir / "db-synced"
        if marker.exists():
            return
        mariadb.schema("cinder", "cinder", lambda: run(
            [str(layout.VENV / "bin" / "cinder-manage"), "--config-file", str(conf_path()),
             "db", "sync"], env={**layout.DAEMON_ENV, **_env()}, timeout=300))
        marker.write_text("")

    def status(self, lab: Lab) -> Status:
        synced = layout.path("cinder", "db-synced").exists()
        return Status("up" if synced else "down", address=str(conf_path()),
                      details={"config": str(conf_path())})


class CinderService(Component):
    """One of cinder-api, cinder-scheduler, cinder-volume.

    They reconnect to RabbitMQ every second until it serves, so they start after it
    starts, not after it is ready: their Python start-up overlaps the broker's boot."""

    after = ("rabbitmq",)

    def __init__(self, binary: str, requires: tuple[str, ...]) -> None:
        self.name = binary
        self.requires = ("cinder-db", *requires)
        self.ready_timeout = 90
        self.poll_interval = 0.3

    def programs(self) -> list[Program]:
        return [Program(self.name, [str(layout.VENV / "bin" / self.name), "--config-file",
                                    str(conf_path())], group=self.name, env=_env(),
                        stop_wait=15)]

    @property
    def service_host(self) -> str:
        if self.name == "cinder-volume":
            return f"{layout.CINDER_HOST}@{layout.CINDER_BACKEND}"
        return layout.CINDER_HOST

    def up(self, lab: Lab) -> None:
        if (self.name == "cinder-api" and not lab.program_pids([self.name])
                and port_open(layout.CINDER_LISTEN, layout.CINDER_PORT)):
            raise LabError(f"port {layout.CINDER_LISTEN}:{layout.CINDER_PORT} is taken by "
                           "a process not started by the lab")
        super().up(lab)

    def _reported_since_start(self, lab: Lab, record: dict[str, Any]) -> bool:
        """Whether the os-services record was written by the running process.

        A record keeps saying "up" for service_down_time after its process died, so after
        a restart only a heartbeat newer than the start counts. The database keeps whole
        seconds (rounded), hence the extra second."""
        info = lab.supervisor.info(self.name)
        stamp = record.get("updated_at")
        if info is None or not stamp:
            return False
        when = datetime.datetime.fromisoformat(stamp.split(".")[0]).replace(
            tzinfo=datetime.timezone.utc).timestamp()
        return when >= info.started + 1

    def ready(self, lab: Lab) -> bool:
        if self.name == "cinder-api":
            api("os-services")
            return True
        rec = services().get((self.name, self.service_host))
        if not (rec and rec["state"] == "up" and self._reported_since_start(lab, rec)):
            return False
        if self.name == "cinder-volume":
            # cinder-volume reports "up" before the scheduler holds its capabilities;
            # until then every create fails with "No valid backend".
            pools = api("scheduler-stats/get_pools")["pools"]
            return any(p["name"].startswith(self.service_host) for p in pools)
        return True

    def status(self, lab: Lab) -> Status:
        st = super().status(lab)
        if self.name == "cinder-api":
            st.address = f"{layout.CINDER_LISTEN}:{layout.CINDER_PORT}"
            st.details["endpoint"] = layout.cinder_endpoint()
            if st.state == "up":
                try:
                    api("os-services")
                except LabError as e:
                    st.state, st.details["error"] = "starting", str(e)
            return st
        st.details["host"] = self.service_host
        try:
            rec = services().get((self.name, self.service_host))
        except LabError:
            rec = None
        st.details["service"] = rec["state"] if rec else None
        if st.state == "up" and st.details["service"] != "up":
            st.state = "starting"
        return st
