"""Models and jobs pages (`worker:`) and their JSON API (`worker_api:`, under /api/v1/)."""

from __future__ import annotations

from django.urls import path

from worker import api, views

app_name = "worker"

urlpatterns = [
    path("collections/<int:pk>/models/", views.models_page, name="models"),
    path("collections/<int:pk>/train/", views.train, name="train"),
    path("collections/<int:pk>/training-policy/", views.training_policy, name="training_policy"),
    path("status/", views.status, name="status"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/<int:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("models/<int:pk>/activate/", views.version_activate, name="version_activate"),
    path(
        "models/<int:pk>/delete-embeddings/",
        views.version_delete_embeddings,
        name="version_delete_embeddings",
    ),
]

api_urlpatterns = [
    path("collections/<int:pk>/train/", api.train, name="train"),
    path("collections/<int:pk>/models/", api.models, name="models"),
    path("jobs/<int:pk>/", api.job, name="job"),
    path("jobs/<int:pk>/cancel/", api.job_cancel, name="job_cancel"),
    path("models/<int:pk>/activate/", api.activate, name="activate"),
]
