"""The one way tests wait for something another process does (a worker, a web server)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    condition: Callable[[], Any],
    what: str,
    seconds: float = 120,
    every: float = 0.2,
    process: subprocess.Popen[Any] | None = None,
) -> Any:
    """Polls `condition` every `every` seconds until it returns something true, and returns that.
    Fails the test naming `what` after `seconds`, or at once if `process` (the one expected to
    do the work) has exited."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if process is not None and process.poll() is not None:
            pytest.fail(f"gave up waiting for {what}: the process exited ({process.returncode})")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {seconds:g} s")
        time.sleep(every)
