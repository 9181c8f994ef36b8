from __future__ import annotations

from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Pair labeling"

    def ready(self) -> None:
        from labeling import deletion

        deletion.connect()
