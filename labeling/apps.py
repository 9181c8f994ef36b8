from __future__ import annotations

from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Pair labeling"

    def ready(self) -> None:
        from labeling import deletion
        from labeling.demo import explain_demo
        from retrieval.signals import demo_loaded

        demo_loaded.connect(explain_demo, dispatch_uid="labeling-demo-loaded")
        deletion.connect()
