"""Deleting images and collections through the pages and the API: what goes with them (files,
vectors, pairs, leases, answers, the groups they formed, checkpoints), what stays (the audit log,
every other image), who may, and that nothing shows a deleted image again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import Event
from labeling.answers import pair_for, record_answer
from labeling.inference import infer
from labeling.models import Constraint, ConstraintRevision, LabelingSettings, Pair
from labeling.pair_queue import open_pairs
from labeling.strategies import settings_for
from retrieval import deletion, indexes, queries
from retrieval.autoret.constants import EMBED_DIM
from retrieval.models import Collection, Embedding, Image, ModelVersion
from retrieval.signals import images_deleted
from tests.labeling.conftest import add_images, add_version
from worker.models import Job

pytestmark = pytest.mark.django_db


def login(client: Client, user, password: str) -> Client:
    client.login(username=user.username, password=password)
    return client


def pair(collection: Collection, a: Image, b: Image, **fields) -> Pair:
    low, high = sorted([a.pk, b.pk])
    return Pair.objects.create(collection=collection, a_id=low, b_id=high, **fields)


@pytest.fixture
def labelled(collection, annotator, curator, media_root: Path):
    """Six images with vectors; answers make 0, 1 and 2 one group and 2 and 3 different; a
    queued pair of image 1 is leased by the annotator."""
    images = add_images(collection, 6)
    version = add_version(collection, images, number=1, seed=0)
    for user in (annotator, curator):
        record_answer(pair_for(collection, images[0].pk, images[1].pk), user, "same")
        record_answer(pair_for(collection, images[1].pk, images[2].pk), user, "same")
    record_answer(pair_for(collection, images[2].pk, images[3].pk), annotator, "different")
    pair(
        collection, images[1], images[4],
        leased_by=annotator, lease_expires_at=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip
    pair(collection, images[0], images[5])
    return images, version


def delete_through_page(client: Client, collection: Collection, ids: list[int], **extra):
    url = reverse("retrieval:images_delete", args=[collection.pk])
    return client.post(url, {"images": ids, "confirm": "yes", **extra})


def assert_nothing_of(image: Image, media_root: Path) -> None:
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not (media_root / str(image.file.name)).exists()
    assert not (media_root / str(image.thumbnail.name)).exists()
    assert not Embedding.objects.filter(image_id=image.pk).exists()
    involving = Pair.objects.filter(a_id=image.pk) | Pair.objects.filter(b_id=image.pk)
    assert not involving.exists()


def test_curator_deletes_an_image_with_everything_derived_from_it(
    client: Client, collection, curator, password, labelled, media_root,
    django_capture_on_commit_callbacks,
) -> None:  # fmt: skip
    images, _ = labelled
    gone = images[1]
    assert infer(collection).implied(images[0].pk, images[2].pk) == "same"
    assert settings_for(collection).implied_pairs > 0
    answers_before = Constraint.objects.count()
    login(client, curator, password)
    with django_capture_on_commit_callbacks(execute=True):
        response = delete_through_page(client, collection, [gone.pk])
    assert response.status_code == 302
    assert_nothing_of(gone, media_root)
    # Its four answers and their history went with its pairs (the lease too); the rest stay.
    assert Constraint.objects.count() == answers_before - 4
    assert not ConstraintRevision.objects.filter(pair__a_id=gone.pk).exists()
    assert Pair.objects.filter(collection=collection).count() == 2
    # The group it held together is worked out again: 0 and 2 are no longer implied the same.
    assert infer(collection).implied(images[0].pk, images[2].pk) is None
    labeling = LabelingSettings.objects.get(collection=collection)
    assert labeling.implied_pairs == 0
    for kept in images[:1] + images[2:]:
        assert (media_root / kept.file.name).exists()
        assert Embedding.objects.filter(image_id=kept.pk).exists()
    event = Event.objects.get(action=Event.Action.IMAGES_DELETE)
    assert event.username == curator.username
    assert event.collection_id == collection.pk
    assert event.detail == {
        "collection_name": collection.name,
        "count": 1,
        "images": [{"id": gone.pk, "name": gone.original_name, "sha256": gone.sha256}],
    }


def test_the_confirmation_shows_the_selection_and_deletes_nothing(
    client: Client, collection, curator, password, labelled
) -> None:
    images, _ = labelled
    login(client, curator, password)
    url = reverse("retrieval:images_delete", args=[collection.pk])
    shown = client.get(url, {"images": [images[0].pk, images[3].pk]})
    assert shown.status_code == 200
    assert images[0].original_name in shown.content.decode()
    assert images[3].original_name in shown.content.decode()
    # The grid's "Delete selected" posts the checkboxes without `confirm`: the same page.
    posted = client.post(url, {"images": [images[0].pk], "next": "https://evil.example/"})
    assert posted.status_code == 200
    assert b"evil.example" not in posted.content
    assert Image.objects.filter(collection=collection).count() == 6
    assert client.get(url).status_code == 400  # nothing selected
    assert client.get(url, {"images": "x"}).status_code == 400


def test_after_deleting_the_page_it_started_from_comes_back_unless_it_showed_the_image(
    client: Client, collection, curator, password, labelled,
    django_capture_on_commit_callbacks,
) -> None:  # fmt: skip
    images, _ = labelled
    login(client, curator, password)
    similar = reverse("retrieval:similar", args=[collection.pk, images[0].pk])
    with django_capture_on_commit_callbacks(execute=True):
        kept = delete_through_page(client, collection, [images[5].pk], next=similar)
        gone = delete_through_page(client, collection, [images[0].pk], next=similar)
    assert kept["Location"] == similar
    assert gone["Location"] == reverse("retrieval:collection_detail", args=[collection.pk])


def test_only_curators_and_admins_see_and_use_deletion(
    client: Client, collection, annotator, outsider, curator, password, labelled
) -> None:
    images, _ = labelled
    detail = reverse("retrieval:image_detail", args=[collection.pk, images[0].pk])
    grid = reverse("retrieval:collection_detail", args=[collection.pk])
    login(client, annotator, password)
    assert b"Delete" not in client.get(detail).content
    assert b'form="delete-form"' not in client.get(grid).content
    assert delete_through_page(client, collection, [images[0].pk]).status_code == 403
    login(client, outsider, password)
    assert delete_through_page(client, collection, [images[0].pk]).status_code == 404
    assert Image.objects.filter(pk=images[0].pk).exists()
    login(client, curator, password)
    assert reverse("retrieval:images_delete", args=[collection.pk]).encode() in (
        client.get(detail).content
    )
    assert b'form="delete-form"' in client.get(grid).content
    # Curators delete images, never the collection.
    collection_delete = reverse("retrieval:collection_delete", args=[collection.pk])
    assert client.get(collection_delete).status_code == 403
    assert client.post(collection_delete, {"name": collection.name}).status_code == 403
    assert Collection.objects.filter(pk=collection.pk).exists()


def test_search_duplicates_map_and_queue_never_show_a_deleted_image(
    client: Client, collection, curator, annotator, password, labelled,
    django_capture_on_commit_callbacks,
) -> None:  # fmt: skip
    images, version = labelled
    gone = images[4]
    login(client, curator, password)
    similar = reverse("retrieval:similar", args=[collection.pk, images[0].pk])
    marker = f'data-image="{gone.pk}"'.encode()
    assert marker in client.get(similar).content
    with django_capture_on_commit_callbacks(execute=True):
        delete_through_page(client, collection, [gone.pk])
    assert marker not in client.get(similar).content
    found = queries.nearest(version, np.zeros(EMBED_DIM, dtype=np.float32), k=10)
    assert gone.pk not in [image_id for image_id, _ in found]
    assert len(found) == 5
    groups, _ = queries.near_duplicate_pairs(version, 1e9, limit=100)
    assert gone.pk not in {i for group in groups for i in group.image_ids}
    page = reverse("retrieval:image_detail", args=[collection.pk, gone.pk]).encode()
    duplicates = reverse("retrieval:duplicates", args=[collection.pk])
    assert page not in client.get(duplicates, {"threshold": "1e9"}).content
    assert page not in client.get(reverse("retrieval:map", args=[collection.pk])).content
    queued = open_pairs(collection, timezone.now()).values_list("a_id", "b_id")
    assert all(gone.pk not in ids for ids in queued)
    assert client.get(page.decode()).status_code == 404
    assert client.get(f"/media/{gone.thumbnail.name}").status_code == 404


def test_a_rolled_back_deletion_keeps_rows_and_files(
    collection, curator, labelled, media_root, django_capture_on_commit_callbacks
) -> None:
    images, _ = labelled

    def broken(**_) -> None:
        raise RuntimeError("the refresh failed")

    images_deleted.connect(broken, dispatch_uid="test-broken")
    try:
        with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
            deletion.delete_images(collection, [images[0].pk], by=curator)
    finally:
        images_deleted.disconnect(dispatch_uid="test-broken")
    assert Image.objects.filter(pk=images[0].pk).exists()
    assert (media_root / images[0].file.name).exists()
    assert Pair.objects.filter(a_id=images[0].pk).exists()
    assert not Event.objects.filter(action=Event.Action.IMAGES_DELETE).exists()


def test_copy_embeddings_skips_images_deleted_since_the_batch_was_read(
    collection, curator, labelled
) -> None:
    images, _ = labelled
    version = ModelVersion.objects.create(
        collection=collection, number=2, kind=ModelVersion.Kind.TRAINED
    )
    deletion.delete_images(collection, [images[2].pk], by=curator)
    ids = [images[1].pk, images[2].pk, images[3].pk]
    vectors = np.ones((3, EMBED_DIM), dtype=np.float32)
    assert queries.copy_embeddings(version, ids, vectors) == 2
    assert sorted(Embedding.objects.filter(version=version).values_list("image_id", flat=True)) == [
        images[1].pk,
        images[3].pk,
    ]


def test_api_deletes_a_selection_and_one_image(
    collection, curator, annotator, labelled, django_capture_on_commit_callbacks
) -> None:
    images, _ = labelled
    api = APIClient()
    api.force_authenticate(annotator)
    url = reverse("api:delete_images", args=[collection.pk])
    assert api.post(url, {"images": [images[0].pk]}, format="json").status_code == 403
    api.force_authenticate(curator)
    assert api.post(url, {"images": []}, format="json").status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(url, {"images": [images[0].pk, images[1].pk]}, format="json")
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["deleted"]] == [images[0].pk, images[1].pk]
    assert response.json()["deleted"][0]["sha256"] == images[0].sha256
    # A repeated request (a retry) deletes nothing more and is no error.
    again = api.post(url, {"images": [images[0].pk]}, format="json")
    assert again.status_code == 200 and again.json() == {"deleted": []}
    one = reverse("api:image", args=[collection.pk, images[2].pk])
    api.force_authenticate(annotator)
    assert api.get(one).json()["original_name"] == images[2].original_name
    assert api.delete(one).status_code == 403
    api.force_authenticate(curator)
    assert api.delete(one).status_code == 204
    assert api.delete(one).status_code == 404
    assert Image.objects.filter(collection=collection).count() == 3


def test_admin_deletes_the_collection_after_typing_its_name(
    client: Client, collection, admin, password, labelled, media_root, settings, tmp_path,
    django_capture_on_commit_callbacks,
) -> None:  # fmt: skip
    images, version = labelled
    settings.MODELS_DIR = tmp_path / "models"
    version.checkpoint = f"collection-{collection.pk}/v1"
    version.save()
    checkpoint = settings.MODELS_DIR / version.checkpoint
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    other = Collection.objects.create(name="Other")
    kept = add_images(other, 1)[0]
    indexes.build_index(version, force=True)
    Job.objects.create(
        kind=Job.Kind.EMBED, collection=collection, requested_by=admin, status=Job.Status.DONE
    )
    login(client, admin, password)
    url = reverse("retrieval:collection_delete", args=[collection.pk])
    page = client.get(url).content.decode()
    for shown in ("Images</th><td>6", "Pairs</th><td>5", "Answers</th><td>5", "Jobs</th><td>1"):
        assert shown in page
    assert client.post(url, {"name": "shoes"}).status_code == 400
    assert Collection.objects.filter(pk=collection.pk).exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"name": collection.name})
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert not Collection.objects.filter(pk=collection.pk).exists()
    for image in images:
        assert_nothing_of(image, media_root)
    assert not (media_root / "collections" / str(collection.pk)).exists()
    assert not checkpoint.exists() and settings.MODELS_DIR.exists()
    assert not indexes.has_index(version.pk)
    assert not Pair.objects.filter(collection_id=collection.pk).exists()
    assert (media_root / kept.file.name).exists()
    # The log outlives the collection: the deletion names it, earlier rows keep its id.
    event = Event.objects.get(action=Event.Action.COLLECTION_DELETE)
    assert event.collection_id == collection.pk and event.username == admin.username
    assert event.detail["name"] == collection.name and event.detail["images"] == 6
    assert Event.objects.filter(collection_id=collection.pk, action=Event.Action.ANSWER).count()


def test_a_collection_is_not_deleted_under_a_running_job(
    client: Client, collection, admin, password, labelled
) -> None:
    Job.objects.create(
        kind=Job.Kind.EMBED, collection=collection, requested_by=admin, status=Job.Status.RUNNING
    )
    login(client, admin, password)
    url = reverse("retrieval:collection_delete", args=[collection.pk])
    response = client.post(url, {"name": collection.name})
    assert response.status_code == 409
    assert b"cancel them" in response.content
    assert Collection.objects.filter(pk=collection.pk).exists()
    assert not Event.objects.filter(action=Event.Action.COLLECTION_DELETE).exists()


def test_the_api_deletes_a_collection_for_its_admins_only(
    collection, admin, curator, labelled, media_root, django_capture_on_commit_callbacks
) -> None:
    images, _ = labelled
    api = APIClient()
    url = reverse("api:collection", args=[collection.pk])
    api.force_authenticate(curator)
    assert api.get(url).json()["name"] == collection.name
    assert api.delete(url).status_code == 403
    api.force_authenticate(admin)
    running = Job.objects.create(
        kind=Job.Kind.EMBED, collection=collection, requested_by=admin, status=Job.Status.RUNNING
    )
    refused = api.delete(url)
    assert refused.status_code == 409 and "cancel them" in refused.json()["detail"]
    assert Collection.objects.filter(pk=collection.pk).exists()
    running.status = Job.Status.CANCELLED
    running.save()
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(url)
    assert response.status_code == 200
    assert response.json()["deleted"]["images"] == len(images)
    assert response.json()["deleted"]["jobs"] == 1
    assert not Collection.objects.filter(pk=collection.pk).exists()
    assert not (media_root / "collections" / str(collection.pk)).exists()
    assert Event.objects.filter(action=Event.Action.COLLECTION_DELETE).count() == 1
    assert api.delete(url).status_code == 404
