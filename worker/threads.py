"""How many CPU threads PyTorch uses in a worker process (AUTORET_TORCH_THREADS).

PyTorch starts one OpenMP thread per core, and OpenMP threads spin while they wait. Where the
worker shares its cores with gunicorn, PostgreSQL or other workers, that oversubscription is
ruinous: on the 2-core development machine at load 5, one step of the head's training took about
1 s with 2 threads and 0.07 s with 1. So a worker process uses one core fewer than the machine
has (at least one), leaving one for the web server and the database on a single machine.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def limit_torch_threads(**_: Any) -> None:
    """Celery's worker_process_init: before the process runs any task."""
    import torch  # the worker process loads it for every task anyway

    torch.set_num_threads(settings.AUTORET_TORCH_THREADS)
