"""Pages of the labeling app: label and its instructions, groups (with the adjudication queue),
one-to-many marks."""

from __future__ import annotations

from django.urls import path

from labeling import views

app_name = "labeling"
urlpatterns = [
    path("collections/<int:pk>/label/", views.label, name="label"),
    path(
        "collections/<int:pk>/label/instructions/",
        views.edit_instructions,
        name="instructions",
    ),
    path("collections/<int:pk>/groups/", views.groups, name="groups"),
    path("collections/<int:pk>/mark/", views.mark, name="mark"),
]
