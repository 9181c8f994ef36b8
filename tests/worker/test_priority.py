"""Tasks run below the web server's CPU priority (worker/priority.py)."""

from __future__ import annotations

import os
import threading

from worker.priority import lower_priority


def nice_in_a_fresh_thread() -> int:
    # Linux keeps the nice value per thread: a thread of its own leaves the test process's alone.
    seen: list[int] = []

    def run() -> None:
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_a_task_process_runs_at_the_configured_nice_value(settings):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    settings.AUTORET_WORKER_NICE = max(base, 10)
    assert nice_in_a_fresh_thread() == max(base, 10)


def test_nice_zero_leaves_the_priority_alone(settings):
    settings.AUTORET_WORKER_NICE = 0
    assert nice_in_a_fresh_thread() == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_worker_process_leaves_cores_to_the_web_server(settings) -> None:
    import torch

    from worker.priority import limit_torch_threads

    before = torch.get_num_threads()
    settings.AUTORET_TORCH_THREADS = 1
    try:
        limit_torch_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
