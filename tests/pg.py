"""A real PostgreSQL for tests: a private cluster on a unix socket, one database per test.

:class:`PgServer` runs ``initdb`` and ``pg_ctl`` (PostgreSQL 15, found on PATH)
as the ``postgres`` user when the tests run as root (the server refuses root),
with its data and socket directories private to that user (mode 0700), listening
on no TCP address (``listen_addresses=''``) and trusting local connections.
Tests connect through the socket as role ``postgres``:
``postgresql://postgres@/DB?host=SOCKETDIR``.

``conftest.py`` starts one per session (``postgres_server``) and gives each test
a fresh database (``postgres_url``) copied from a template, so tests never see
each other's rows. Tests that stop a server (to see what an unreachable database
does) start their own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

#: The template every test database is copied from.
TEMPLATE = "taonet_template"
_counter = itertools.count(1)


def binaries_or_skip() -> None:
    """Skip (fail when CI=true) if the PostgreSQL binaries or psycopg are missing."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if shutil.which(name) is None]
    why = None
    if missing:
        why = f"PostgreSQL binaries not on PATH: {', '.join(missing)}"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            why = "psycopg is not installed (pip install 'psycopg[binary]')"
    if why is None and os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why = "tests run as root and there is no 'postgres' user to run the server as"
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs a real PostgreSQL: {why}")
        pytest.skip(why)


def database_name(url: str) -> str:
    """The database a ``postgresql://`` URL names."""
    return urlsplit(url).path.lstrip("/")


class PgServer:
    """One private PostgreSQL cluster; :meth:`start`, :meth:`url`, :meth:`stop`."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.base = Path(tempfile.mkdtemp(prefix="taonet-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._user: str | None = "postgres"
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        else:
            self._user = None
            self._uid, self._gid = os.geteuid(), os.getegid()
        for directory in (self.base, self.socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chown(directory, self._uid, self._gid)
            directory.chmod(0o700)
        self.running = False

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs.update(user=self._uid, group=self._gid, extra_groups=[])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base,
            timeout=120,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({result.returncode}):"
                f" {result.stdout[-1500:]} {result.stderr[-1500:]}"
            )
        return result

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -c unix_socket_permissions=0700"
            f" -c fsync={'on' if self.fsync else 'off'} -c max_connections=100"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
            self.running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def private_dir(self, name: str) -> Path:
        """A new directory only the server's user can enter (for tablespaces)."""
        path = self.base / "spaces" / name
        path.mkdir(parents=True, mode=0o700)
        for directory in (path.parent, path):
            os.chown(directory, self._uid, self._gid)
        return path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    def admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def create_template(self) -> None:
        self.admin(f"CREATE DATABASE {TEMPLATE}")

    def fresh_database(self) -> str:
        """A new empty database (copied from the template); its URL."""
        name = f"test_{os.getpid()}_{next(_counter)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = database_name(url)
        with contextlib.suppress(Exception):
            self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
