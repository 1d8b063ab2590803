"""MariaDB, Cinder's database: a private instance on a unix socket in the state dir.

Side effects owned: the mariadbd daemon and its data directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import run
from attachflow.lab.supervision import Program


def socket_path() -> Path:
    return layout.path("mysql", "mysqld.sock")


def sql(statement: str) -> subprocess.CompletedProcess:
    """Run one SQL statement as the instance's root user."""
    return run(["mariadb", "--no-defaults", "-S", str(socket_path()), "-uroot", "-N", "-e",
                statement], timeout=30)


def load(dump: Path) -> None:
    """Run the SQL of a dump file."""
    run(["mariadb", "--no-defaults", "-S", str(socket_path()), "-uroot"],
        input=dump.read_text(), timeout=120)


def dump(database: str, dest: Path) -> None:
    """Write ``database``'s schema and rows to ``dest`` (atomically)."""
    out = run(["mariadb-dump", "--no-defaults", "-S", str(socket_path()), "-uroot",
               "--skip-dump-date", "--databases", database], timeout=120).stdout
    layout.write(dest, out, 0o600)


def installed_version(distribution: str) -> str:
    """The version of a package in the lab's virtual environment."""
    found = sorted(layout.VENV.glob(f"lib/python*/site-packages/{distribution}-*.dist-info"))
    if not found:
        raise LabError(f"{distribution} is not installed in {layout.VENV}")
    return found[-1].name.removeprefix(f"{distribution}-").removesuffix(".dist-info")


def schema(database: str, distribution: str, sync: Callable[[], None]) -> None:
    """Give ``database`` the schema of the installed ``distribution``'s migrations.

    The migrations (``sync``) take seconds to a minute on every fresh lab; the database
    they leave, dumped once per release of the distribution into the lab's cache, loads
    in a fraction of that."""
    seed = layout.CACHE_DIR / f"{database}-db-{installed_version(distribution)}.sql"
    if seed.exists():
        load(seed)
        return
    sql(f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8")
    sync()
    dump(database, seed)


class MariaDB(Component):
    name = "mariadb"
    apt_packages = ("mariadb-server",)
    ready_timeout = 30

    def programs(self) -> list[Program]:
        data = layout.path("mysql", "data")
        return [Program("mariadb", [
            "mariadbd", f"--defaults-file={layout.path('mysql', 'my.cnf')}",
            f"--datadir={data}", f"--socket={socket_path()}",
            f"--pid-file={layout.path('mysql', 'mysqld.pid')}",
            f"--log-error={layout.path('log', 'mariadb.err')}"], group=self.name)]

    def up(self, lab: Lab) -> None:
        layout.render("my.cnf", layout.path("mysql", "my.cnf"), 0o600)
        data = layout.path("mysql", "data")
        if not (data / "mysql").is_dir():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=120)
        super().up(lab)

    def ready(self, lab: Lab) -> bool:
        return run(["mariadb-admin", "--no-defaults", "-S", str(socket_path()), "-uroot",
                    "ping"], check=False, timeout=10).returncode == 0

    def status(self, lab: Lab) -> Status:
        st = super().status(lab)
        st.address = str(socket_path())
        st.details.update(socket=str(socket_path()), database="cinder")
        return st
