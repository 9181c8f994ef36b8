"""/api/v1/ routes of the retrieval app (included from config/urls.py)."""

from __future__ import annotations

from django.urls import path

from retrieval import api, search_api

app_name = "api"

urlpatterns = [
    # Collections, images, embeddings and model downloads (retrieval/api.py)
    path("collections/", api.collections, name="collections"),
    path("collections/<int:pk>/", api.collection, name="collection"),
    path("collections/<int:pk>/images/", api.collection_images, name="collection_images"),
    path(
        "collections/<int:pk>/embeddings/export/", api.export_embeddings, name="export_embeddings"
    ),
    path("collections/<int:pk>/model/export/", api.export_model, name="export_model"),
    path("collections/<int:pk>/images/delete/", api.delete_images, name="delete_images"),
    path("collections/<int:pk>/images/<int:image_pk>/", api.image, name="image"),
    # Search (retrieval/search_api.py)
    path("collections/<int:pk>/search/", search_api.api_search, name="search"),
]
