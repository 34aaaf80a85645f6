"""A private, throw-away PostgreSQL cluster for tests (the registry's URL backend).

    pytest_plugins = ["postgres_server"]   # in a test module: provides the fixtures below

    def test_x(postgres_url): ...          # a fresh, empty database for this test

`postgres_server` (session) runs `initdb` into a temporary folder and starts the cluster with
`pg_ctl` on a free 127.0.0.1 port (Unix socket in the data folder, fsync off: nothing here
needs to survive a crash); it is stopped and deleted at the end of the session. Every test
that asks for `postgres_url` gets its own database, dropped afterwards.

The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin. PostgreSQL refuses
to run as root, so as root the server binaries run as the `postgres` user (`runuser`), in a
folder that user owns. When the binaries or the psycopg driver are missing the test is
skipped, unless LMFORGE_REQUIRE_POSTGRES=1 (set in CI), where it fails: a broken CI image must
not silently skip every PostgreSQL test.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "lmforge"  # the cluster's superuser (trust auth: no password)
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it
_BINARIES = ("initdb", "pg_ctl", "postgres")
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres; None when PostgreSQL is not installed."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)  # Debian links /usr/bin -> real dir
    # Debian/Ubuntu keep the server binaries off PATH, one folder per major version.
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=_major_version, reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in _BINARIES):
            return folder
    return None


def _major_version(folder: Path) -> int:
    match = re.fullmatch(r"\d+", folder.parent.name)
    return int(match.group()) if match else -1


def _requirement_missing(message: str) -> None:
    if os.environ.get("LMFORGE_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " and LMFORGE_REQUIRE_POSTGRES=1 is set", pytrace=False)
    pytest.skip(message)


def require_postgres() -> Path:
    """The binaries folder; skips the test (or fails it under LMFORGE_REQUIRE_POSTGRES=1)."""
    try:
        import psycopg  # noqa: F401  (the registry's driver; the helper also uses it)
    except ImportError:
        _requirement_missing(
            "psycopg is not installed (pip install 'psycopg[binary]>=3.1'); "
            "PostgreSQL registry tests need the driver"
        )
    folder = find_postgres_bin()
    if folder is None:
        _requirement_missing(
            "PostgreSQL is not installed (apt-get install postgresql: initdb/pg_ctl not found "
            "on PATH or in /usr/lib/postgresql/*/bin); PostgreSQL registry tests need a server"
        )
    assert folder is not None
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A running cluster started by `start_postgres`; see the module docstring."""

    def __init__(self, bin_dir: Path, data_dir: Path, port: int, as_user: list[str]) -> None:
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.port = port
        self.host = "127.0.0.1"
        self._as_user = as_user  # ["runuser", "-u", "postgres", "--"] when we are root
        self._names = itertools.count(1)
        self._running = True

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        # CREATE/DROP DATABASE cannot run inside a transaction: autocommit.
        dsn = f"host={self.host} port={self.port} user={USER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        name = f"registry_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, closing connections that registries of the test still pool."""
        self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the cluster (fast shutdown) and delete its folder. Safe to call twice."""
        if self._running:
            self._running = False
            cmd = [
                *self._as_user, str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S),
            ]  # fmt: skip
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}",
            pytrace=False,
        )


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that runs the server binaries, and the user to chown the data to."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        runuser = None
    if runuser is None:
        _requirement_missing(
            "running as root, PostgreSQL needs an unprivileged `postgres` user and `runuser` "
            "(the postgresql package creates the user); or run the tests as a normal user"
        )
    return [str(runuser), "-u", "postgres", "--"], "postgres"


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start on a free port; returns once the server accepts connections."""
    bin_dir = require_postgres()
    as_user, owner = _run_as()
    # Not under pytest's tmp_path: that is private to root (0700) and the server may run as
    # `postgres`. A short path also keeps the Unix socket under its 107-character limit.
    data_dir = Path(tempfile.mkdtemp(prefix="lmforge-pg-"))
    if owner is not None:
        shutil.chown(data_dir, user=owner, group=owner)
    try:
        initdb = [
            *as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", USER,
            "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync",
        ]  # fmt: skip
        _run(initdb, "initdb")
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            options = f"-p {port} -h 127.0.0.1 -k {data_dir} " + " ".join(
                f"-c {setting}" for setting in _FAST_SETTINGS
            )
            server = PostgresServer(bin_dir, data_dir, port, as_user)
            cmd = [
                *as_user, str(bin_dir / "pg_ctl"), "start", "-D", str(data_dir), "-o", options,
                "-l", str(server.log_path), "-w", "-t", str(START_TIMEOUT_S),
            ]  # fmt: skip
            started = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
            if started.returncode == 0:
                return server
            if "already in use" not in server.log_tail():
                break  # not a port clash: retrying would fail the same way
        log = server.log_tail()
        server.stop()  # in case pg_ctl gave up waiting on a server that is still starting
        pytest.fail(
            f"PostgreSQL did not start (pg_ctl: {started.stdout}{started.stderr}); log:\n{log}",
            pytrace=False,
        )
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise


# -- fixtures (register with `pytest_plugins = ["postgres_server"]`) --------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with start_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database for this test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
