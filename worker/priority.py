"""Tasks share the machine with the web server: below its CPU priority, and with fewer PyTorch
threads than cores.

On the single-machine setup the worker shares the cores that serve the Label page, and a training
job alone can keep both of a 2-core machine busy for minutes: at equal priority every answer then
waits its turn behind the training's threads (docs/benchmarks.md, "Labeling latency"). At nice 10
the kernel's scheduler gives the web server and PostgreSQL the CPU whenever they want it, and the
training the rest, so it still uses every idle cycle. The worker's main process (the consumer and
its heartbeats) keeps its priority; only the processes that run tasks are lowered.

PyTorch starts one OpenMP thread per core, and OpenMP threads spin while they wait. Where the
worker shares its cores with gunicorn, PostgreSQL or other workers, that oversubscription is
ruinous: on the 2-core development machine at load 5, one step of the head's training took about
1 s with 2 threads and 0.07 s with 1. So a task process uses AUTORET_TORCH_THREADS, one core
fewer than the machine has (at least one).
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


def limit_torch_threads(**_: Any) -> None:
    import torch  # a task process loads it for every task anyway

    torch.set_num_threads(settings.AUTORET_TORCH_THREADS)


def connect_signals() -> None:
    worker_process_init.connect(lower_priority, weak=False, dispatch_uid="autoret-task-priority")
    worker_process_init.connect(
        limit_torch_threads, weak=False, dispatch_uid="autoret-task-threads"
    )
