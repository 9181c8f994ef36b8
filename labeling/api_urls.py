"""/api/v1/ routes of the labeling app (included from config/urls.py)."""

from __future__ import annotations

from django.urls import path

from labeling import api

app_name = "labeling_api"
urlpatterns = [
    path("collections/<int:pk>/pairs/next/", api.next_pair, name="next_pair"),
    path("collections/<int:pk>/pairs/counters/", api.counters, name="counters"),
    path("collections/<int:pk>/pairs/mark/", api.mark, name="mark"),
    path("collections/<int:pk>/constraints/export/", api.export_constraints, name="export"),
    path("collections/<int:pk>/constraints/import/", api.import_constraints, name="import"),
    path("collections/<int:pk>/groups/export/", api.export_groups, name="export_groups"),
    path(
        "collections/<int:pk>/labeling/instructions/",
        api.labeling_instructions,
        name="instructions",
    ),
    path(
        "collections/<int:pk>/groups/dataset/",
        api.export_groups_dataset,
        name="export_groups_dataset",
    ),
    path("pairs/<int:pair_id>/answer/", api.answer, name="answer"),
    path("pairs/<int:pair_id>/undo/", api.undo, name="undo"),
    path("pairs/<int:pair_id>/adjudicate/", api.adjudicate, name="adjudicate"),
]
