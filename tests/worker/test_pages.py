"""Models and jobs pages and API through the test client: roles, refusals, htmx partials."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from retrieval.models import Collection, ModelVersion
from worker import actions, views
from worker.models import Job, TrainingPolicy

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


@pytest.fixture
def trained(collection: Collection) -> ModelVersion:
    """A ready trained version with a loss history and an evaluation, as a finished job leaves."""
    version = ModelVersion.objects.create(
        collection=collection,
        number=2,
        kind=ModelVersion.Kind.TRAINED,
        status=ModelVersion.Status.READY,
        metrics={
            "loss": [{"step": s, "loss": 10.0 / s} for s in range(1, 30)],
            "training": {
                "final_loss": 0.34,
                "steps": 29,
                "neighbors": "neighbour partners not used: neighbourhood density 0.77",
            },
            "evaluation": {"map_at_100": 0.5, "constraint_agreement": 0.75, "answered_pairs": 8},
        },
    )
    return version


@pytest.mark.parametrize("role", ["annotator", "curator"])
def test_annotator_and_curator_cannot_train(collection, role, request) -> None:
    user = request.getfixturevalue(role)
    page = client_for(user).post(reverse("worker:train", args=[collection.pk]))
    api = api_for(user).post(reverse("worker_api:train", args=[collection.pk]), {}, format="json")
    assert page.status_code == 403
    assert api.status_code == 403
    assert not Job.objects.exists()


def test_outsider_gets_404_for_models_training_and_jobs(collection, outsider, admin) -> None:
    job = Job.objects.create(kind=Job.Kind.TRAIN, collection=collection, requested_by=admin)
    client = client_for(outsider)
    assert client.get(reverse("worker:models", args=[collection.pk])).status_code == 404
    assert client.post(reverse("worker:train", args=[collection.pk])).status_code == 404
    assert client.get(reverse("worker:job_detail", args=[job.pk])).status_code == 404
    api = api_for(outsider)
    assert api.get(reverse("worker_api:job", args=[job.pk])).status_code == 404
    assert api.post(reverse("worker_api:train", args=[collection.pk])).status_code == 404
    assert job.pk not in [j.pk for j in client.get(reverse("worker:job_list")).context["jobs"]]


def test_admin_starts_training_and_lands_on_the_job_page(collection, admin) -> None:
    response = client_for(admin).post(
        reverse("worker:train", args=[collection.pk]), {"minutes": "0.5"}
    )
    job = Job.objects.get(collection=collection)
    assert response.status_code == 302
    assert response["Location"] == reverse("worker:job_detail", args=[job.pk])
    assert job.options["minutes"] == 0.5
    assert job.version is not None and job.version.status == ModelVersion.Status.TRAINING


def test_a_second_start_is_refused_with_a_message(collection, admin) -> None:
    client = client_for(admin)
    client.post(reverse("worker:train", args=[collection.pk]))
    again = client.post(reverse("worker:train", args=[collection.pk]))
    assert again.status_code == 409
    assert "already running" in again.content.decode()
    assert Job.objects.filter(collection=collection).count() == 1


def test_api_starts_training_then_refuses_a_second_start(collection, admin) -> None:
    api = api_for(admin)
    url = reverse("worker_api:train", args=[collection.pk])
    first = api.post(url, {"minutes": 1}, format="json")
    assert first.status_code == 202
    job_id = first.json()["job_id"]
    second = api.post(url, {}, format="json")
    assert second.status_code == 409
    assert second.json()["job_id"] == job_id
    state = api.get(reverse("worker_api:job", args=[job_id])).json()
    assert state["status"] == "queued"
    assert {"status", "progress", "metrics", "error"} <= set(state)


def test_api_refuses_true_as_training_minutes(collection, admin) -> None:
    response = api_for(admin).post(
        reverse("worker_api:train", args=[collection.pk]), {"minutes": True}, format="json"
    )
    assert response.status_code == 400
    assert "minutes" in response.json()
    assert not Job.objects.exists()


def test_a_retraining_threshold_past_the_column_is_a_400_not_a_500(collection, admin) -> None:
    response = client_for(admin).post(
        reverse("worker:training_policy", args=[collection.pk]),
        {"retrain_after_answers": "99999999999999999999", "minutes": "1"},
    )
    assert response.status_code == 400
    assert not TrainingPolicy.objects.exists()


def measured_versions(
    collection: Collection, rows: list[tuple[int | None, dict[str, float]]]
) -> None:
    """Ready versions 1, 2, ... trained on `answers` (None: version 1, untrained) with these
    evaluations, as finished jobs leave them."""
    for number, (answers, evaluation) in enumerate(rows, start=1):
        ModelVersion.objects.create(
            collection=collection,
            number=number,
            kind=ModelVersion.Kind.PRETRAINED if answers is None else ModelVersion.Kind.TRAINED,
            status=ModelVersion.Status.READY,
            config={} if answers is None else {"answers": answers},
            metrics={"evaluation": evaluation},
        )


def test_the_held_out_share_is_saved_and_held_to_its_limit(collection, admin) -> None:
    url = reverse("worker:training_policy", args=[collection.pk])
    too_many = client_for(admin).post(url, {"held_out_percent": "51"})
    assert too_many.status_code == 400
    assert "at most 50 % of the answers held out" in too_many.content.decode()
    assert not TrainingPolicy.objects.exists()
    assert client_for(admin).post(url, {"held_out_percent": "10"}).status_code == 302
    assert TrainingPolicy.held_out_percent_of(collection.pk) == 10
    page = client_for(admin).get(reverse("worker:models", args=[collection.pk])).content.decode()
    assert 'name="held_out_percent" value="10"' in page


def test_without_labels_the_quality_plot_draws_the_held_out_auc(collection, admin) -> None:
    held_out = {"held_out_agreement": 0.6, "held_out_pairs": 9, "held_out_percent": 10}
    measured_versions(
        collection,
        [(None, {**held_out, "held_out_auc": 0.61}), (60, {**held_out, "held_out_auc": 0.74})],
    )
    page = client_for(admin).get(reverse("worker:models", args=[collection.pk])).content.decode()
    assert "v2: held-out AUC 0.740 after 60 answers" in page
    assert "AUC on held-out answers, 0.610 to 0.740" in page
    assert "agreement 0.600, AUC 0.740" in page  # the versions table's held-out column


@pytest.fixture
def owner(collection: Collection, django_user_model, password):
    """An admin of the collection who is no site admin: the quotas bind them."""
    from retrieval.models import Membership

    user = django_user_model.objects.create_user("owner", "owner@example.org", password)
    Membership.objects.create(collection=collection, user=user, role=Membership.Role.ADMIN)
    return user


def test_a_training_job_over_the_per_job_cap_is_refused(collection, owner, admin, settings) -> None:
    settings.AUTORET_MAX_TRAIN_MINUTES = 240
    url = reverse("worker_api:train", args=[collection.pk])
    refused = api_for(owner).post(url, {"minutes": 1440}, format="json")
    assert refused.status_code == 403
    assert "at most 240 minutes" in refused.json()["detail"]
    assert not Job.objects.exists()
    assert api_for(admin).post(url, {"minutes": 1440}, format="json").status_code == 202


def test_a_users_training_minutes_per_day_are_capped(collection, owner, settings) -> None:
    settings.AUTORET_TRAIN_MINUTES_PER_USER_DAY = 100
    url = reverse("worker:train", args=[collection.pk])
    client = client_for(owner)
    assert client.post(url, {"minutes": "60"}).status_code == 302
    actions.cancel_job(Job.objects.get())
    refused = client.post(url, {"minutes": "60"})
    assert refused.status_code == 403
    assert "limit of 100" in refused.content.decode()
    assert Job.objects.count() == 1
    assert client.post(url, {"minutes": "40"}).status_code == 302


def test_the_collections_default_minutes_are_held_to_the_cap(collection, owner, settings) -> None:
    settings.AUTORET_MAX_TRAIN_MINUTES = 30
    TrainingPolicy.objects.create(collection=collection, minutes=1000)
    job = actions.start_training(collection, None)
    assert job.options["minutes"] == 30


def test_cancel_of_a_queued_job_stops_it_at_once(collection, admin) -> None:
    api = api_for(admin)
    job_id = api.post(reverse("worker_api:train", args=[collection.pk]), {}, format="json").json()[
        "job_id"
    ]
    response = api.post(reverse("worker_api:job_cancel", args=[job_id]))
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    # Cancelled jobs no longer block a new start.
    assert api.post(reverse("worker_api:train", args=[collection.pk])).status_code == 202


def test_job_page_polls_while_running_and_the_partial_comes_alone(collection, admin) -> None:
    job = Job.objects.create(
        kind=Job.Kind.TRAIN,
        collection=collection,
        status=Job.Status.RUNNING,
        phase="training",
        progress=0.25,
        metrics={"loss": [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0}]},
        log_tail="10:00:00 training slice 1 from scratch on cpu",
    )
    client = client_for(admin)
    url = reverse("worker:job_detail", args=[job.pk])
    page = client.get(url).content.decode()
    assert f'hx-get="{url}"' in page and f'href="{url}"' in page
    assert "every 1s" in page and "<svg" in page and "from scratch" in page
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<section id="job-progress"')
    assert "<html" not in partial
    Job.objects.filter(pk=job.pk).update(status=Job.Status.DONE, progress=1.0)
    assert "every 1s" not in client.get(url).content.decode()


def test_models_page_shows_metrics_loss_curve_and_the_active_version(
    collection, trained, admin, annotator
) -> None:
    Collection.objects.filter(pk=collection.pk).update(active_version=trained)
    page = client_for(admin).get(reverse("worker:models", args=[collection.pk])).content.decode()
    assert "v2 <strong>(active)</strong>" in page
    assert "0.500" in page and "0.750" in page and "<polyline" in page
    assert "neighbour partners not used: neighbourhood density 0.77" in page
    assert "Train</button>" in page
    seen_by_annotator = client_for(annotator).get(reverse("worker:models", args=[collection.pk]))
    assert seen_by_annotator.status_code == 200
    assert "Train</button>" not in seen_by_annotator.content.decode()
    listed = api_for(annotator).get(reverse("worker_api:models", args=[collection.pk])).json()
    assert [(v["number"], v["active"]) for v in listed] == [(2, True)]


def test_models_page_plots_quality_against_the_answers_each_version_learned_from(
    collection, admin
) -> None:
    measured_versions(
        collection,
        [(a, {"map_at_100": q}) for a, q in ((None, 0.41), (50, 0.47), (100, 0.52))],
    )
    page = client_for(admin).get(reverse("worker:models", args=[collection.pk])).content.decode()
    assert "Quality against answers" in page
    assert page.count("<circle") == 3
    assert "v1: mAP@100 0.410 after 0 answers" in page
    assert "v3: mAP@100 0.520 after 100 answers" in page
    # Higher quality is drawn higher (smaller y), more answers further right.
    points = views.quality_curve(actions.version_rows(collection))
    assert points is not None
    xs = [p["x"] for p in points["points"]]
    ys = [p["y"] for p in points["points"]]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)


def test_activating_an_unfinished_version_is_refused(collection, admin) -> None:
    version = ModelVersion.objects.create(
        collection=collection, number=1, kind="trained", status=ModelVersion.Status.EMBEDDING
    )
    response = api_for(admin).post(reverse("worker_api:activate", args=[version.pk]))
    assert response.status_code == 400
    collection.refresh_from_db()
    assert collection.active_version_id is None


def test_delete_embeddings_asks_for_confirmation_first(collection, trained, admin) -> None:
    client = client_for(admin)
    url = reverse("worker:version_delete_embeddings", args=[trained.pk])
    assert "Delete 0 embeddings" in client.get(url).content.decode()
    trained.refresh_from_db()
    assert trained.status == ModelVersion.Status.READY
    client.post(url, {"confirm": "yes"})
    trained.refresh_from_db()
    assert trained.status == ModelVersion.Status.DELETED


def test_a_version_read_as_ready_before_its_deletion_cannot_be_activated(
    collection, trained
) -> None:
    from worker import actions

    seen_ready = ModelVersion.objects.get(pk=trained.pk)
    actions.delete_embeddings(trained)
    with pytest.raises(actions.VersionNotAllowed, match="deleted"):
        actions.activate_version(seen_ready)
    collection.refresh_from_db()
    trained.refresh_from_db()
    assert (collection.active_version_id, trained.status) == (None, ModelVersion.Status.DELETED)


def test_an_activation_while_embeddings_are_deleted_is_refused(
    collection, trained, monkeypatch
) -> None:
    from retrieval import indexes
    from worker import actions

    refused: list[str] = []
    drop_index = indexes.drop_index

    def activate_meanwhile(version: ModelVersion) -> None:
        try:
            actions.activate_version(ModelVersion.objects.get(pk=trained.pk))
        except actions.VersionNotAllowed as error:
            refused.append(str(error))
        drop_index(version)

    monkeypatch.setattr(indexes, "drop_index", activate_meanwhile)
    actions.delete_embeddings(trained)
    collection.refresh_from_db()
    assert collection.active_version_id is None
    assert refused and "deleted" in refused[0]


def test_curator_cannot_activate_or_delete(collection, trained, curator) -> None:
    client = client_for(curator)
    assert client.post(reverse("worker:version_activate", args=[trained.pk])).status_code == 403
    url = reverse("worker:version_delete_embeddings", args=[trained.pk])
    assert client.post(url, {"confirm": "yes"}).status_code == 403
