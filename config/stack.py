"""`make run`: the whole single-machine platform as one foreground process.

Starts (or reuses) the embedded PostgreSQL, starts the embedded Redis, migrates, makes sure an admin
account exists, starts one Celery worker and gunicorn, prints the URL and login, and on Ctrl-C or
SIGTERM stops everything it started. Children stay in this process group, so `kill -9` of the group
takes them along; PostgreSQL runs in its own session (pg_ctl detaches it) and is simply reused by
the next start, which is how data and a second `make run` survive a kill.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction

from audit.models import Event
from config.embedded import (
    ensure_postgres,
    postgres_running,
    start_redis,
    stop_postgres,
    stop_process,
)

# Next to the PostgreSQL data dir while a stack owns the server it started (removed on a clean
# stop), so a restart after kill -9 knows the server is its own to stop.
POSTGRES_OWNER_FILE = "postgres.owner"


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    web_workers: int = 2
    out: Any = sys.stdout  # a text stream or Django's OutputWrapper


@dataclass
class Stack:
    options: StackOptions
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_postgres: bool = False
    stopping: bool = False

    @property
    def log_dir(self) -> Path:
        return settings.DATA_DIR / "logs"

    def say(self, line: str) -> None:
        self.options.out.write(line + "\n")
        self.options.out.flush()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if settings.EMBEDDED_POSTGRES_DIR is not None:
            pgdata = settings.EMBEDDED_POSTGRES_DIR
            owner = pgdata.parent / POSTGRES_OWNER_FILE
            # A server that another process (a test run) started is reused and left running on
            # shutdown; one that a stack killed with -9 left behind is adopted and stopped.
            self.started_postgres = owner.exists() or not postgres_running(pgdata)
            address = ensure_postgres(pgdata, str(settings.DATABASES["default"]["NAME"]))
            if self.started_postgres:
                owner.write_text(f"{os.getpid()}\n")
            self.say(f"postgres  embedded PostgreSQL + pgvector, socket in {address.socket_dir}")
        if settings.EMBEDDED_REDIS_DIR is not None:
            self.children["redis"] = start_redis(settings.EMBEDDED_REDIS_DIR)
            self.say(f"redis     embedded Redis at {settings.REDIS_URL}")
        call_command("migrate", interactive=False, verbosity=0)
        login = ensure_admin()
        self.children["worker"] = self._spawn("worker", worker_command())
        self.children["web"] = self._spawn("web", self._web_command())
        url = f"http://{self.options.host}:{self.options.port}/"
        if not wait_for_http(url + "healthz", timeout=90, accept=(200, 503)):
            raise RuntimeError(
                f"the web server did not answer on {url}; see {self.log_dir}/web.log"
            )
        self.say(f"logs      {self.log_dir}/")
        self.say("")
        self.say(f"AutoRet is running at {url}")
        self.say(login)
        self.load_demo()
        self.say("Press Ctrl-C to stop.")

    def load_demo(self) -> None:
        """Import the Fashion-MNIST demo (AUTORET_DEMO_SIZE images, 0 for none, "all" for 70,000)
        while the site already serves; the worker embeds it, so search appears within a minute."""
        size = settings.AUTORET_DEMO_SIZE
        if size == "0":
            return
        from retrieval.management.commands.load_demo import DEMO_NAME
        from retrieval.models import Collection
        from worker.hooks import queue_embedding

        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        call_command(
            "load_demo", f"--size={size}", "--no-embed",
            *([f"--owner={admin.get_username()}"] if admin else []),
            stdout=self.options.out,
        )  # fmt: skip
        demo = Collection.objects.get(name=DEMO_NAME)
        # Idempotent: embeds only what has no vector yet (a load interrupted earlier included).
        queue_embedding(demo.pk)

    def _web_command(self) -> list[str]:
        # Threads, so a long download never blocks a worker's main loop (docs/exports.md). No
        # keep-alive: a kept-alive connection stays with the worker process that accepted it, and
        # with 20 annotators the process holding more of them answered its annotators up to 4x
        # slower; a connection per request goes to whichever worker accepts first
        # (docs/benchmarks.md, "Labeling latency").
        return [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"{self.options.host}:{self.options.port}",
            "--workers", str(self.options.web_workers), "--threads", "4", "--keep-alive", "0",
            "--timeout", "120", "--graceful-timeout", "10",
            "--access-logfile", str(self.log_dir / "access.log"),
        ]  # fmt: skip

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=settings.BASE_DIR,
        )  # fmt: skip

    def wait(self) -> int:
        """Block until a signal asks us to stop (0) or a child dies on its own (1)."""
        while not self.stopping:
            for name, child in self.children.items():
                if child.poll() is not None and not self.stopping:
                    self.say(
                        f"{name} exited with code {child.returncode}; see {self.log_dir}/{name}.log"
                    )
                    return 1
            time.sleep(0.5)
        return 0

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def stop(self) -> None:
        self.stopping = True
        for name in ("web", "worker", "redis"):
            child = self.children.pop(name, None)
            if child is not None:
                stop_process(child, timeout=20)
        if self.started_postgres and settings.EMBEDDED_POSTGRES_DIR is not None:
            stop_postgres(settings.EMBEDDED_POSTGRES_DIR)
            (settings.EMBEDDED_POSTGRES_DIR.parent / POSTGRES_OWNER_FILE).unlink(missing_ok=True)
        self.say("stopped")


def worker_command(
    queues: str | None = None, hostname: str | None = None, *, solo: bool = False
) -> list[str]:
    """The one Celery worker command line (the stack's worker and the tests' workers): one task
    at a time, consuming `queues` (default: gpu too when this machine has CUDA). `solo` runs
    tasks in the worker process itself, so a kill -9 of the worker kills its task too."""
    if queues is None:
        queues = "default,gpu" if _cuda_available() else "default"
    pool = ["--pool", "solo"] if solo else ["--concurrency", "1"]
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, *pool,
        "--loglevel", "INFO", "--hostname", hostname or f"autoret-{os.getpid()}@%h",
    ]  # fmt: skip


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def ensure_admin() -> str:
    """Create the first admin account once; returns the line telling the user how to log in.

    The password comes from DJANGO_SUPERUSER_PASSWORD, or is generated and printed this one time
    (and kept in the data dir, readable by this user only, for whoever missed the terminal).
    The new account is in the audit log as `user.create` with no user and `"by": "runstack"`.
    """
    user_model = get_user_model()
    existing = user_model.objects.filter(is_superuser=True).order_by("pk").first()
    password_file = settings.DATA_DIR / "initial-admin-password"
    if existing is not None:
        hint = f" (first password in {password_file})" if password_file.exists() else ""
        return f"Log in as {existing.get_username()}{hint}."
    username = settings.DJANGO_SUPERUSER_USERNAME
    password = settings.DJANGO_SUPERUSER_PASSWORD or secrets.token_urlsafe(12)
    email = settings.DJANGO_SUPERUSER_EMAIL
    with transaction.atomic():
        user = user_model.objects.create_superuser(
            username=username, email=email, password=password
        )
        # Logged like an account made in the admin, by nobody: the platform made it.
        rights = {name: getattr(user, name) for name in ("is_superuser", "is_staff", "is_active")}
        Event.record(
            Event.Action.USER_CREATE, None, None, user, username=username, **rights, by="runstack"
        )
    if not settings.DJANGO_SUPERUSER_PASSWORD:
        password_file.touch(mode=0o600)
        password_file.write_text(password + "\n")
    return (
        f"Log in as {username} with password {password} (shown once; change it after logging in)."
    )


def wait_for_http(url: str, timeout: float, accept: tuple[int, ...] = (200,)) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in accept:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def run_stack(options: StackOptions) -> int:
    stack = Stack(options)
    signal.signal(signal.SIGTERM, stack.request_stop)
    signal.signal(signal.SIGINT, stack.request_stop)
    try:
        stack.start()
        return stack.wait()
    finally:
        stack.stop()
