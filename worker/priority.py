"""Tasks run below the web server's CPU priority.

On the single-machine setup the worker shares the cores that serve the Label page, and a training
job alone can keep both of a 2-core machine busy for minutes: at equal priority every answer then
waits its turn behind the training's threads (docs/benchmarks.md, "Labeling latency"). At nice 10
the kernel's scheduler gives the web server and PostgreSQL the CPU whenever they want it, and the
training the rest, so it still uses every idle cycle. The worker's main process (the consumer and
its heartbeats) keeps its priority; only the processes that run tasks are lowered.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init
from django.conf import settings


def lower_priority(**_: Any) -> None:
    # Absolute (not os.nice's increment): a pool process started again never ends up lower still.
    # Threads started afterwards (torch's) inherit it.
    if settings.AUTORET_WORKER_NICE:
        os.setpriority(os.PRIO_PROCESS, 0, settings.AUTORET_WORKER_NICE)


def connect_signals() -> None:
    worker_process_init.connect(lower_priority, weak=False, dispatch_uid="autoret-task-priority")
