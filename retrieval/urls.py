from __future__ import annotations

from django.urls import path

from retrieval import activity, search_views, views

app_name = "retrieval"

urlpatterns = [
    # Collections, images, import (views.py)
    path("collections/", views.collection_list, name="collection_list"),
    path("collections/<int:pk>/", views.collection_detail, name="collection_detail"),
    path("collections/<int:pk>/upload/", views.upload, name="upload"),
    path("collections/<int:pk>/delete/", views.collection_delete, name="collection_delete"),
    path("collections/<int:pk>/images/delete/", views.images_delete, name="images_delete"),
    path("collections/<int:pk>/images/<int:image_pk>/", views.image_detail, name="image_detail"),
    path("media/<path:path>", views.media, name="media"),
    path("collections/<int:pk>/activity/", activity.activity, name="activity"),
    # Search (search_views.py)
    path(
        "collections/<int:pk>/images/<int:image_pk>/similar/",
        search_views.similar,
        name="similar",
    ),
    path("collections/<int:pk>/search/", search_views.search, name="search"),
    path("collections/<int:pk>/duplicates/", search_views.duplicates, name="duplicates"),
    path("collections/<int:pk>/map/", search_views.embedding_map, name="map"),
]
