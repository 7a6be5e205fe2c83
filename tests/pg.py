"""A real PostgreSQL for tests: a private cluster in a temporary directory, a fresh database each.

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user
(created by the Debian package) and its programs run through ``runuser -u postgres --``; as any
other user they run directly. The server listens on a free TCP port on 127.0.0.1 and on a unix
socket in the cluster's directory; authentication is ``trust`` for the ``postgres`` role, which
tests connect as. Nothing here is skipped: without PostgreSQL the fixtures fail with a message
saying how to install it (``make test`` does).

Use the fixtures ``postgres`` (the session's cluster) and ``pg_url`` (a new empty database per
test, dropped afterwards) — register this module as a plugin or import them — or the class::

    with PostgresCluster.start() as cluster:
        url = cluster.create_database("t1")     # postgresql://postgres@127.0.0.1:PORT/t1
        ...

Every started cluster is stopped by its context manager or fixture; an ``atexit`` hook stops any
that a crashed session left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
import pytest

__all__ = ["PostgresCluster", "pg_url", "postgres"]

_OWNER = "postgres"          # the Debian package's system user
_running: set[PostgresCluster] = set()
_names = itertools.count(1)


def _bin_dir() -> Path:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL is not installed (no initdb): `make test` installs it, or "
                "`apt-get install -y postgresql`", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresCluster:
    """One private PostgreSQL server in a temporary directory (see the module docstring)."""

    def __init__(self, root: Path, port: int, bin_dir: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.bin_dir = bin_dir
        self.host = "127.0.0.1"
        self.user = _OWNER

    @classmethod
    def start(cls) -> PostgresCluster:
        """initdb a new cluster in a temporary directory and start it (``pg_ctl -w``)."""
        bin_dir = _bin_dir()
        root = Path(tempfile.mkdtemp(prefix="kemon-pg-"))
        cluster = cls(root, _free_port(), bin_dir)
        try:
            if os.geteuid() == 0:
                try:
                    pwd.getpwnam(_OWNER)
                except KeyError:
                    pytest.fail(f"no {_OWNER!r} user: install the postgresql package",
                                pytrace=False)
                shutil.chown(root, _OWNER, _OWNER)
            cluster._run("initdb", "-D", str(cluster.data), "-U", _OWNER, "-A", "trust",
                         "-E", "UTF8", "--locale=C", "--no-sync")
            cluster._pg_ctl_start()
        except BaseException:
            cluster._remove()
            raise
        _running.add(cluster)
        return cluster

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", _OWNER, "--", *command] if os.geteuid() == 0 else command

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(self._command(program, *args), capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{program} failed ({result.returncode}): {result.stderr.strip()}\n"
                        f"{tail}", pytrace=False)

    def _pg_ctl_start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
                   "-c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def url(self, database: str = "postgres", *, via_socket: bool = False) -> str:
        """A libpq URL for ``database``: TCP on 127.0.0.1, or the unix socket (``host=``)."""
        if via_socket:
            return (f"postgresql://{self.user}@/{database}"
                    f"?host={self.socket_dir}&port={self.port}")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        name = name or f"test_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self not in _running:
            return
        _running.discard(self)
        try:
            subprocess.run(self._command("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                                         "stop"),
                           capture_output=True, timeout=60, check=False)
        finally:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_running):
        with contextlib.suppress(Exception):
            cluster.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The test session's PostgreSQL cluster (started on first use, stopped at the end)."""
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database in the session's cluster, dropped after the test."""
    name = f"test_{os.getpid()}_{next(_names)}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)
