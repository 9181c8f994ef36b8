"""Search pages and the search API through the test client, on really embedded collections."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from rest_framework.test import APIClient

from retrieval import embedding, queries, search
from retrieval.imports import Candidate, import_items
from retrieval.models import Collection, Image
from tests.retrieval.test_search_embedding import add_pictures, png

pytestmark = pytest.mark.django_db

SIZE = search.PAGE_SIZE + 6


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def embedded(collection: Collection) -> list[int]:
    ids = add_pictures(collection, range(SIZE // 2), label="shirt")
    ids += add_pictures(collection, range(SIZE // 2, SIZE), label="shoe")
    assert embedding.embed_new_images(collection).activated
    collection.refresh_from_db()
    return ids


def near_copy(seed: int) -> bytes:
    """The seeded picture with one pixel changed: new bytes, nearly the same vector."""
    pixels = np.array(PILImage.open(io.BytesIO(png(seed))))
    pixels[0, 0] ^= 1
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_similar_page_shows_a_page_of_neighbours_with_distances(
    client, annotator, password, collection, embedded
) -> None:
    client.login(username="annotator", password=password)
    url = reverse("retrieval:similar", args=[collection.pk, embedded[0]])
    response = client.get(url)
    assert response.status_code == 200
    hits = response.context["hits"]
    assert len(hits) == search.PAGE_SIZE
    assert embedded[0] not in {hit.image.pk for hit in hits}
    distances = [hit.distance for hit in hits]
    assert distances == sorted(distances)
    html = response.content.decode()
    assert "ImageNet features, untrained" in html
    assert f"{distances[0]:.3g}" in html
    assert 'href="?offset=24"' in html and 'hx-get="?offset=24"' in html


def test_load_more_returns_the_rest_as_a_partial(
    client, annotator, password, collection, embedded
) -> None:
    client.login(username="annotator", password=password)
    url = reverse("retrieval:similar", args=[collection.pk, embedded[0]])
    first = {hit.image.pk for hit in client.get(url).context["hits"]}
    response = client.get(url, {"offset": search.PAGE_SIZE}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "<html" not in response.content.decode()
    rest = {hit.image.pk for hit in response.context["hits"]}
    assert len(rest) == SIZE - 1 - search.PAGE_SIZE
    assert not rest & first
    assert response.context["next_offset"] is None


def test_pages_say_when_nothing_is_embedded_yet(client, curator, password, collection) -> None:
    ids = add_pictures(collection, range(2))
    client.login(username="curator", password=password)
    response = client.get(reverse("retrieval:similar", args=[collection.pk, ids[0]]))
    assert response.status_code == 200
    assert "no active model version yet" in response.content.decode()
    for name in ("duplicates", "map", "search"):
        page = client.get(reverse(f"retrieval:{name}", args=[collection.pk]))
        assert page.status_code == 200
        assert "No model version answers yet" in page.content.decode()


def test_an_image_added_after_embedding_says_it_is_not_embedded_yet(
    client, annotator, password, collection, embedded
) -> None:
    [late] = add_pictures(collection, [SIZE + 1])
    client.login(username="annotator", password=password)
    response = client.get(reverse("retrieval:similar", args=[collection.pk, late]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "no vector in the active model version yet" in html
    assert "ImageNet features, untrained" in html


def test_outsider_gets_404_on_every_search_page_and_the_api(
    client, outsider, password, collection, embedded
) -> None:
    client.login(username="outsider", password=password)
    pages = [reverse("retrieval:similar", args=[collection.pk, embedded[0]])] + [
        reverse(f"retrieval:{name}", args=[collection.pk])
        for name in ("search", "duplicates", "map")
    ]
    for url in pages:
        assert client.get(url).status_code == 404
    api = APIClient()
    api.force_authenticate(outsider)
    url = reverse("api:search", args=[collection.pk])
    assert api.post(url, {"image_id": embedded[0]}, format="json").status_code == 404


def test_search_by_uploaded_image_finds_its_twin(
    client, annotator, password, collection, embedded
) -> None:
    client.login(username="annotator", password=password)
    upload = SimpleUploadedFile("query.png", near_copy(3), content_type="image/png")
    response = client.post(
        reverse("retrieval:search", args=[collection.pk]), {"image": upload}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    hits = response.context["hits"]
    assert hits[0].image.pk == embedded[3]
    assert "ImageNet features, untrained" in response.content.decode()


def test_search_rejects_a_file_that_is_not_an_image(
    client, annotator, password, collection, embedded
) -> None:
    client.login(username="annotator", password=password)
    upload = SimpleUploadedFile("fake.png", b"<html>not an image</html>")
    response = client.post(reverse("retrieval:search", args=[collection.pk]), {"image": upload})
    assert response.status_code == 400
    assert "fake.png: not an image" in response.content.decode()


def test_near_duplicates_are_shown_in_groups(
    client, curator, password, collection, embedded
) -> None:
    twin = import_items(collection, [Candidate("twin.png", lambda: near_copy(5))]).created[0]
    embedding.embed_new_images(collection)
    version = collection.active_version
    assert version is not None
    vector = queries.vector_of(version, twin)
    assert vector is not None
    [(nearest, distance)] = queries.nearest(version, vector, 1, exclude_image_ids=[twin])
    assert nearest == embedded[5]
    client.login(username="curator", password=password)
    response = client.get(
        reverse("retrieval:duplicates", args=[collection.pk]), {"threshold": distance * 1.5}
    )
    assert response.status_code == 200
    groups = [sorted(i.pk for i in g["images"]) for g in response.context["groups"]]
    assert sorted([embedded[5], twin]) in groups
    assert all(twin not in g or len(g) == 2 for g in groups)
    assert "twin.png" in response.content.decode()


def test_duplicates_threshold_must_be_a_number(
    client, curator, password, collection, embedded
) -> None:
    client.login(username="curator", password=password)
    url = reverse("retrieval:duplicates", args=[collection.pk])
    assert client.get(url, {"threshold": "lots"}).status_code == 400


def test_map_places_every_sampled_image_coloured_by_label(
    client, annotator, password, collection, embedded
) -> None:
    client.login(username="annotator", password=password)
    response = client.get(reverse("retrieval:map", args=[collection.pk]))
    assert response.status_code == 200
    points = response.context["points"]
    assert len(points) == SIZE
    assert all(0 <= p["left"] <= 100 and 0 <= p["top"] <= 100 for p in points)
    legend = dict(response.context["legend"])
    assert set(legend) == {"shirt", "shoe"} and legend["shirt"] != legend["shoe"]
    assert "ImageNet features, untrained" in response.content.decode()


def test_api_search_by_image_id(annotator, collection, embedded) -> None:
    api = APIClient()
    api.force_authenticate(annotator)
    url = reverse("api:search", args=[collection.pk])
    response = api.post(url, {"image_id": embedded[1], "k": 5}, format="json")
    assert response.status_code == 200
    body = response.json()
    version = collection.active_version
    assert version is not None
    assert body["model_version"] == {"id": version.pk, "number": 1, "kind": "pretrained"}
    assert len(body["results"]) == 5
    assert embedded[1] not in {r["image_id"] for r in body["results"]}
    assert set(body["results"][0]) == {"image_id", "distance"}


def test_api_search_by_uploaded_image(annotator, collection, embedded) -> None:
    api = APIClient()
    api.force_authenticate(annotator)
    upload = SimpleUploadedFile("q.png", near_copy(7), content_type="image/png")
    response = api.post(
        reverse("api:search", args=[collection.pk]), {"image": upload, "k": 3}, format="multipart"
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["image_id"] == embedded[7]


def test_api_search_errors_are_clear(annotator, collection, embedded) -> None:
    api = APIClient()
    api.force_authenticate(annotator)
    url = reverse("api:search", args=[collection.pk])
    bad = SimpleUploadedFile("bad.png", b"GIF89a truncated")
    response = api.post(url, {"image": bad}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("image: ")
    assert api.post(url, {"image_id": 10**9}, format="json").status_code == 404
    assert api.post(url, {"image_id": embedded[0], "k": 0}, format="json").status_code == 400
    assert api.post(url, {}, format="json").status_code == 400


def test_api_search_answers_409_before_the_first_version(annotator, collection) -> None:
    ids = add_pictures(collection, range(2))
    api = APIClient()
    api.force_authenticate(annotator)
    response = api.post(
        reverse("api:search", args=[collection.pk]), {"image_id": ids[0]}, format="json"
    )
    assert response.status_code == 409
    assert "no active model version yet" in response.json()["detail"]
    assert Image.objects.filter(collection=collection).count() == 2


def jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (side, side), (200, 40, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_huge_jpeg_query_is_decoded_at_reduced_scale(
    annotator, collection, embedded, monkeypatch
) -> None:
    sizes: list[tuple[int, int]] = []
    embed_pictures = embedding.embed_pictures

    def recording(version, pictures):
        sizes.extend(p.size for p in pictures)
        return embed_pictures(version, pictures)

    monkeypatch.setattr(embedding, "embed_pictures", recording)
    api = APIClient()
    api.force_authenticate(annotator)
    upload = SimpleUploadedFile("big.jpg", jpeg(4000), content_type="image/jpeg")
    response = api.post(reverse("api:search", args=[collection.pk]), {"image": upload})
    assert response.status_code == 200
    assert sizes == [(1000, 1000)]  # 1/4 scale: the smallest JPEG scale of 512 px or more


def test_a_query_image_over_the_pixel_budget_is_a_400_with_the_reason(
    annotator, collection, embedded, settings
) -> None:
    settings.AUTORET_SEARCH_MAX_PIXELS = 10_000
    api = APIClient()
    api.force_authenticate(annotator)
    buffer = io.BytesIO()
    PILImage.new("RGB", (200, 200)).save(buffer, format="PNG")
    upload = SimpleUploadedFile("q.png", buffer.getvalue(), content_type="image/png")
    response = api.post(reverse("api:search", args=[collection.pk]), {"image": upload})
    assert response.status_code == 400
    assert (
        "200x200 pixels is over the limit of 10000 for a query image" in response.json()["detail"]
    )


def test_searches_by_upload_past_the_limit_get_a_429_on_the_api_and_the_page(
    client, annotator, password, collection, embedded, monkeypatch
) -> None:
    from retrieval.throttles import SearchUploadThrottle

    monkeypatch.setattr(SearchUploadThrottle, "THROTTLE_RATES", {"search_uploads": "2/min"})
    api = APIClient()
    api.force_authenticate(annotator)
    url = reverse("api:search", args=[collection.pk])

    def query() -> SimpleUploadedFile:
        return SimpleUploadedFile("q.png", near_copy(3), content_type="image/png")

    assert [api.post(url, {"image": query()}).status_code for _ in range(3)] == [200, 200, 429]
    client.login(username=annotator.username, password=password)
    page = client.post(reverse("retrieval:search", args=[collection.pk]), {"image": query()})
    assert page.status_code == 429
    assert int(page["Retry-After"]) > 0
    assert "Too many searches by image" in page.content.decode()
    # Searching by an image of the collection decodes nothing: not limited.
    assert api.post(url, {"image_id": embedded[0]}, format="json").status_code == 200
