"""`make run`'s process (manage.py runstack) started for real in a data dir of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
IMPORT_USER = "from django.contrib.auth.models import User\n"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        AUTORET_DATA_DIR=str(data_dir), PORT=str(port), PYTHONUNBUFFERED="1", AUTORET_DEMO_SIZE="40"
    )
    env.pop("DJANGO_SUPERUSER_PASSWORD", None)
    return env


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Start runstack in a new process group (as a terminal would) and wait for its URL line."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runstack"], cwd=REPO, env=_env(data_dir, port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        lines.append(line.rstrip())
        if line.startswith("Press Ctrl-C"):
            return process, lines
        if time.monotonic() > deadline:
            break
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail("runstack did not come up:\n" + "\n".join(lines))


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_healthy(port: int, timeout: float = 60) -> str:
    def healthy() -> str:
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        return body if status == 200 else ""

    return wait_for(healthy, "/healthz to report healthy", timeout, every=0.5)


def _manage(data_dir: Path, port: int, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=_env(data_dir, port),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _processes_using(data_dir: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def _wait_for_demo_embeddings(data_dir: Path, port: int, expected: int) -> None:
    """The worker that runstack started embeds the demo collection and activates a version."""
    count = (
        "from retrieval.models import Collection\n"
        "c = Collection.objects.get(name='Fashion-MNIST demo')\n"
        "print(c.active_version.embeddings.count() if c.active_version else 0)"
    )

    def embedded() -> bool:
        return _manage(data_dir, port, "shell", "--no-imports", "-c", count).strip() == str(
            expected
        )

    wait_for(embedded, "the worker to embed the demo collection", 120, every=2)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside tmp_path: as root the server runs as the `pgserver` user, and every pytest run that
    starts on this machine makes /tmp/pytest-of-root private again."""
    base = Path(tempfile.mkdtemp(prefix="autoret-stack-"))
    path = base / "data"
    yield path
    # Leave nothing running whatever the test did.
    from config.embedded import stop_postgres

    stop_postgres(path / "postgres")
    shutil.rmtree(base, ignore_errors=True)


def test_runstack_survives_kill_9_with_data_and_stops_cleanly(data_dir: Path) -> None:
    port = _free_port()
    first, lines = _start(data_dir, port)
    assert any(f"http://127.0.0.1:{port}/" in line for line in lines)
    assert any("Log in as admin with password" in line for line in lines)
    status, login_page = _get(f"http://127.0.0.1:{port}/accounts/login/")
    assert status == 200 and "Log in" in login_page
    health = _wait_healthy(port)
    pgvector = json.loads(health)["database"]["pgvector"]
    assert tuple(int(part) for part in pgvector.split(".")[:2]) >= (0, 8), health

    assert any("Fashion-MNIST demo: 40 images" in line for line in lines)
    _wait_for_demo_embeddings(data_dir, port, expected=40)

    # manage.py reuses the running embedded database.
    _manage(
        data_dir,
        port,
        "shell",
        "--no-imports",
        "-c",
        IMPORT_USER + "User.objects.create_user('kept')",
    )

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    second, lines = _start(data_dir, port)
    try:
        assert any("Log in as admin" in line for line in lines)
        assert not any("with password" in line for line in lines), "the password is shown only once"
        _wait_healthy(port)
        count = IMPORT_USER + "print(User.objects.filter(username='kept').count())"
        out = _manage(data_dir, port, "shell", "--no-imports", "-c", count)
        assert out.strip() == "1"
    finally:
        second.send_signal(signal.SIGTERM)
        output = second.communicate(timeout=90)[0]
    assert second.returncode == 0, output
    assert "stopped" in output
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert _processes_using(data_dir) == []


def test_runstack_leaves_running_a_postgres_it_did_not_start(data_dir: Path) -> None:
    from config.embedded import ensure_postgres, postgres_running

    pgdata = data_dir / "postgres"
    ensure_postgres(pgdata, "autoret")  # as a test run on the same data dir would
    stack, _ = _start(data_dir, _free_port())
    stack.send_signal(signal.SIGTERM)
    output = stack.communicate(timeout=90)[0]
    assert stack.returncode == 0 and "stopped" in output, output
    assert postgres_running(pgdata), "another process's database was stopped"
    assert not (data_dir / "postgres.owner").exists()
