from __future__ import annotations

from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"
    verbose_name = "Workers and jobs"

    def ready(self) -> None:
        from worker import heartbeat, hooks, priority

        heartbeat.connect_signals()
        priority.connect_signals()
        hooks.connect()
