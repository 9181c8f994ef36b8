"""Real Celery workers that tests start, kill -9 and restart, with small job settings."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config.embedded import stop_process
from config.stack import worker_command
from tests.conftest import REPO, service_env
from tests.waiting import wait_for


@dataclass
class Workers:
    """Starts worker processes (solo pool: a kill -9 kills the running task with the worker)."""

    redis_url: str
    folder: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        from worker.heartbeat import live_workers

        name = f"jobs-{os.getpid()}-{len(self.started)}"
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        process = subprocess.Popen(
            worker_command("default,gpu", f"{name}@%h", solo=True),
            cwd=REPO, env=service_env(self.redis_url, **self.env), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.started.append(process)

        def beating() -> bool:
            return any(w["hostname"].startswith(f"{name}@") for w in live_workers())

        try:
            wait_for(beating, f"worker {name}'s first heartbeat", 60, process=process)
        except BaseException:
            process.kill()
            print(self.log(-1))  # in the failed test's captured output
            raise
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()  # SIGKILL: no shutdown handler runs, the task message stays unacked
        process.wait()

    def log(self, index: int) -> str:
        name = f"jobs-{os.getpid()}-{len(self.started) + index if index < 0 else index}"
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def workers(live_redis: str, tmp_path: Path, settings) -> Iterator[Workers]:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_DIR = tmp_path / "models"
    env = {
        "AUTORET_MODELS_DIR": str(settings.MODELS_DIR),
        "AUTORET_CHECKPOINT_SECONDS": "1",
        # Slices and batches stay below the visibility timeout, as docs/training.md asks.
        "AUTORET_TRAIN_SLICE_SECONDS": "3",
        "AUTORET_EMBED_BATCH": "4",
        "AUTORET_TRAIN_BATCH_SIZE": "8",
        # A killed worker's message comes back after this (plus kombu's restore sweep).
        "CELERY_VISIBILITY_TIMEOUT": "10",
    }
    pool = Workers(live_redis, tmp_path, env)
    yield pool
    for process in pool.started:
        if process.poll() is None:
            stop_process(process)
