"""Training jobs as plain function calls: slices, resume, cancel, activation, rollback, deletion."""

from __future__ import annotations

import itertools

import pytest
from django.conf import settings as django_settings

from retrieval import deletion, embedding, features, indexes, versions
from retrieval.autoret.checkpoint import read_info
from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import HeadConfig
from retrieval.models import Collection, Embedding, ImageFeature, ModelVersion
from tests.retrieval.test_search_embedding import add_pictures, count_extractions
from worker import actions, pipeline, retraining
from worker.models import PRETRAINED, SCRATCH, Job, TrainingPolicy


def settings_models_dir():
    return django_settings.MODELS_DIR


@pytest.fixture(autouse=True)
def small_jobs(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_DIR = tmp_path / "models"
    settings.AUTORET_EMBED_BATCH = 8
    settings.AUTORET_CHECKPOINT_SECONDS = 1
    settings.AUTORET_TRAIN_BATCH_SIZE = 8


@pytest.fixture
def searchable(collection: Collection) -> Collection:
    """A small collection embedded by version 1 (pretrained features), with two imported labels."""
    add_pictures(collection, range(0, 12), label="a")
    add_pictures(collection, range(12, 24), label="b")
    embedding.embed_new_images(collection)
    collection.refresh_from_db()
    return collection


def run_to_end(job: Job) -> Job:
    return pipeline.run_here(job, progress_bar=False)


@pytest.mark.django_db
def test_training_embeds_evaluates_and_activates_the_new_version(searchable, admin) -> None:
    old = searchable.active_version
    job = actions.start_training(searchable, admin, minutes=0.03, run_here=True)
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    assert job.progress == 1.0
    assert job.metrics["loss"], "the loss history is recorded"
    searchable.refresh_from_db()
    new = searchable.active_version
    assert new is not None and new.pk != old.pk and new.kind == ModelVersion.Kind.TRAINED
    assert new.status == ModelVersion.Status.READY
    assert Embedding.objects.filter(version=new).count() == 24
    assert "map_at_100" in new.metrics["evaluation"]
    assert new.metrics["training"]["steps"] > 0
    # Whether neighbours were trusted, and why, is on the version and in the job's log.
    assert new.metrics["training"]["neighbors"].startswith("neighbour partners ")
    assert new.metrics["training"]["neighbors"] in job.log_tail


@pytest.mark.django_db
def test_a_second_start_is_refused_while_one_runs(searchable, admin) -> None:
    actions.start_training(searchable, admin, minutes=0.03, run_here=True)
    with pytest.raises(actions.TrainingAlreadyRunning, match="already running"):
        actions.start_training(searchable, admin, minutes=0.03, run_here=True)
    assert Job.objects.filter(collection=searchable, kind=Job.Kind.TRAIN).count() == 1


@pytest.mark.django_db
def test_slices_resume_from_the_checkpoint_step(searchable, admin, settings) -> None:
    settings.AUTORET_TRAIN_SLICE_SECONDS = 1
    job = actions.start_training(searchable, admin, minutes=0.06, run_here=True, recipe=SCRATCH)
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    slices = job.metrics["slices"]
    assert len(slices) >= 2
    for later in slices[1:]:
        assert later["from_step"] > 0
        if later["first_step"] is not None:
            assert later["from_step"] < later["first_step"] <= later["from_step"] + 10


@pytest.mark.django_db
def test_a_cancelled_job_stops_and_search_keeps_the_old_version(searchable, admin) -> None:
    old = searchable.active_version_id
    job = actions.start_training(searchable, admin, minutes=5, run_here=True)
    actions.cancel_job(job)
    job = run_to_end(job)
    assert job.status == Job.Status.CANCELLED
    searchable.refresh_from_db()
    assert searchable.active_version_id == old
    assert job.version_or_fail().status == ModelVersion.Status.FAILED


@pytest.mark.django_db
@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_cancelled_or_failed_version_leaves_no_checkpoint(
    collection, admin, settings, monkeypatch, ending
) -> None:
    job = actions.start_training(collection, admin, minutes=5, run_here=True)
    version = job.version_or_fail()
    folder = settings.MODELS_DIR / version.checkpoint
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    sibling = settings.MODELS_DIR / f"collection-{collection.pk}" / "v1-other"
    sibling.mkdir(parents=True)
    if ending == "cancelled":
        # Between two slices: running, held by nobody (a queued job never ran, so has no files).
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
        actions.cancel_job(job)
    else:

        def broken(*args: object) -> str:
            raise RuntimeError("out of memory")

        monkeypatch.setattr(pipeline, "_train_slice", broken)
    job = run_to_end(job)
    assert job.status == ending
    assert not folder.exists()
    assert sibling.exists()


@pytest.mark.django_db
def test_rollback_then_delete_the_newer_versions_embeddings(searchable, admin) -> None:
    old = searchable.active_version
    run_to_end(actions.start_training(searchable, admin, minutes=0.02, run_here=True))
    searchable.refresh_from_db()
    new = searchable.active_version
    with pytest.raises(actions.VersionNotAllowed):
        actions.delete_embeddings(new)
    actions.activate_version(old)
    searchable.refresh_from_db()
    assert searchable.active_version_id == old.pk
    assert actions.delete_embeddings(new) == 24
    new.refresh_from_db()
    assert new.status == ModelVersion.Status.DELETED
    assert not indexes.has_index(new)
    with pytest.raises(actions.VersionNotAllowed):
        actions.activate_version(new)


@pytest.mark.django_db
def test_enough_new_answers_start_retraining_that_learns_from_them(
    searchable, annotator, live_redis, django_capture_on_commit_callbacks
) -> None:
    from labeling.answers import pair_for, record_answer

    TrainingPolicy.objects.create(collection=searchable, retrain_after_answers=2, minutes=0.02)
    ids = list(searchable.images.order_by("pk").values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        record_answer(pair_for(searchable, ids[0], ids[1]), annotator, "same")
    # The check runs in a worker (consider_retraining); here it is called as the task would be.
    retraining.after_answer(searchable.pk)
    assert not Job.objects.filter(collection=searchable).exists()
    with django_capture_on_commit_callbacks(execute=True):
        record_answer(pair_for(searchable, ids[0], ids[20]), annotator, "different")
    retraining.after_answer(searchable.pk)
    job = Job.objects.get(collection=searchable)
    assert job.requested_by is None and job.options["minutes"] == 0.02
    assert job.options["recipe"] == PRETRAINED
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    assert job.metrics["known_pairs"]["must_explicit"] == 1
    assert job.metrics["evaluation"]["answered_pairs"] == 2
    assert job.version is not None and job.version.config["answers"] == 2
    # Two answers group no large share of the images: they take 5 % of each batch.
    assert job.version.metrics["training"]["known_share"] == 0.05


@pytest.mark.django_db
def test_held_out_answers_are_not_trained_on_and_measure_each_version(searchable, admin) -> None:
    from labeling.answers import pair_for, record_answer
    from labeling.training import is_held_out, known_constraints

    TrainingPolicy.objects.create(collection=searchable, minutes=0.02, held_out_percent=50)
    ids = list(searchable.images.order_by("pk").values_list("pk", flat=True))
    # Three pairs of each kind on each side of the split, whatever ids the database gave; "same"
    # is a class (the image's place modulo 4), so no answer contradicts another.
    chosen: dict[tuple[str, bool], list[tuple[int, int]]] = {}
    for i, j in itertools.combinations(range(len(ids)), 2):
        value = "same" if i % 4 == j % 4 else "different"
        side = chosen.setdefault((value, is_held_out(ids[i], ids[j], 50)), [])
        if len(side) < 3:
            side.append((ids[i], ids[j]))
    assert all(len(pairs) == 3 for pairs in chosen.values()) and len(chosen) == 4
    for (value, _), pairs in chosen.items():
        for a, b in pairs[:2]:  # the third of each comes before the second training
            record_answer(pair_for(searchable, a, b), admin, value)
    job = run_to_end(actions.start_training(searchable, admin, run_here=True))
    assert job.status == Job.Status.DONE, job.error
    assert job.metrics["known_pairs"]["must_explicit"] == 2  # the trained "same" pairs only
    assert job.metrics["known_pairs"]["cannot_explicit"] == 2
    evaluation = job.metrics["evaluation"]
    assert evaluation["answered_pairs"] == 4 and evaluation["held_out_pairs"] == 4
    assert evaluation["held_out_same"] == evaluation["held_out_different"] == 2
    assert evaluation["held_out_percent"] == 50
    assert 0.0 <= evaluation["held_out_agreement"] <= 1.0
    assert 0.0 <= evaluation["held_out_auc"] <= 1.0
    assert job.version is not None and job.version.config["held_out_percent"] == 50

    # Two more held-out answers; the next training measures every version on all six.
    for (value, held), pairs in chosen.items():
        if held:
            record_answer(pair_for(searchable, *pairs[2]), admin, value)
    assert run_to_end(actions.start_training(searchable, admin, run_here=True)).status == "done"
    ready = ModelVersion.objects.filter(collection=searchable, status=ModelVersion.Status.READY)
    assert ready.count() == 3
    for version in ready:
        assert version.metrics["evaluation"]["held_out_pairs"] == 6, version.number

    # Held-out share off: the next training trains on every answer, and no version keeps a
    # held-out measure that compares with nothing.
    TrainingPolicy.objects.filter(collection=searchable).update(held_out_percent=0)
    job = run_to_end(actions.start_training(searchable, admin, run_here=True))
    every_same, every_different = known_constraints(searchable)
    assert job.metrics["known_pairs"]["must_explicit"] == len(every_same) > 3
    assert job.metrics["known_pairs"]["cannot_explicit"] == len(every_different) > 3
    for version in ready.all():
        assert not any(k.startswith("held_out_") for k in version.metrics["evaluation"])


@pytest.mark.django_db
def test_retraining_after_answers_is_on_by_default_and_a_policy_of_zero_turns_it_off(
    searchable, annotator, settings
) -> None:
    from labeling.answers import pair_for, record_answer

    settings.AUTORET_RETRAIN_AFTER_ANSWERS = 2
    ids = list(searchable.images.order_by("pk").values_list("pk", flat=True))
    assert retraining.threshold(searchable.pk) == 2
    TrainingPolicy.objects.create(collection=searchable, retrain_after_answers=0)
    retraining.forget_policies()
    assert retraining.threshold(searchable.pk) == 0
    for other in (1, 2, 3):
        record_answer(pair_for(searchable, ids[0], ids[other]), annotator, "same")
    retraining.after_answer(searchable.pk)
    assert not Job.objects.filter(collection=searchable).exists()
    TrainingPolicy.objects.filter(collection=searchable).update(retrain_after_answers=None)
    retraining.forget_policies()
    assert retraining.threshold(searchable.pk) == 2
    retraining.after_answer(searchable.pk)
    assert Job.objects.get(collection=searchable).requested_by is None


@pytest.mark.django_db
def test_the_default_head_trains_from_cached_features_only(searchable, admin, monkeypatch) -> None:
    def no_decoding(*_args, **_kwargs):
        raise AssertionError("training decoded an image")

    # Every image of `searchable` has its features already (version 1 was embedded from them).
    monkeypatch.setattr(features, "load_pixels", no_decoding)
    monkeypatch.setattr(pipeline.embedding, "load_pixels", no_decoding)
    job = run_to_end(actions.start_training(searchable, admin, minutes=0.02, run_here=True))
    assert job.status == Job.Status.DONE, job.error
    version = job.version
    assert version is not None and version.kind == ModelVersion.Kind.TRAINED
    assert version.config["features"] == FeatureConfig().to_dict()
    assert version.config["head"] == HeadConfig().to_dict()
    assert version.config["train"]["seconds"] == pytest.approx(1.2)
    info = read_info(settings_models_dir() / version.checkpoint)
    assert info["features"] == version.config["features"] and info["step"] > 0
    assert Embedding.objects.filter(version=version).count() == 24


@pytest.mark.django_db
def test_a_killed_training_job_resumes_feature_extraction_where_it_stopped(
    collection, admin, monkeypatch
) -> None:
    add_pictures(collection, range(20))
    computed = count_extractions(monkeypatch)
    job = actions.start_training(collection, admin, minutes=0.02, run_here=True)
    claimed = pipeline.claim(job.pk, "first-worker")
    assert claimed is not None
    assert pipeline.advance(claimed) == 0  # one batch of AUTORET_EMBED_BATCH (8) images
    assert len(computed) == 8 and ImageFeature.objects.count() == 8
    # The worker dies here; the job's next run goes on from the 9th image.
    pipeline.release(claimed)
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    assert sorted(computed) == sorted(collection.images.values_list("pk", flat=True))
    assert ImageFeature.objects.count() == 20


@pytest.mark.django_db
def test_cancel_during_embedding_frees_the_new_versions_vectors(searchable, admin) -> None:
    job = actions.start_training(searchable, admin, minutes=0.01, run_here=True)
    claimed = pipeline.claim(job.pk, "test")
    assert claimed is not None
    assert pipeline.advance(claimed) == 0  # training done, embedding next
    after = pipeline.advance(claimed, 0)  # one batch of AUTORET_EMBED_BATCH images
    assert after is not None
    assert Embedding.objects.filter(version_id=job.version_id).count() == 8
    pipeline.release(claimed)
    actions.cancel_job(job)
    job = run_to_end(job)
    assert job.status == Job.Status.CANCELLED
    assert not Embedding.objects.filter(version_id=job.version_id).exists()
    searchable.refresh_from_db()
    assert searchable.active_version_id != job.version_id


@pytest.mark.django_db
def test_images_deleted_during_training_neither_fail_the_job_nor_come_back(
    searchable, admin, django_capture_on_commit_callbacks
) -> None:
    job = actions.start_training(searchable, admin, minutes=0.01, run_here=True)
    claimed = pipeline.claim(job.pk, "test")
    assert claimed is not None
    # Training has read every image's pixels (frozen in data.npz); then three go, one of them
    # with a vector in the new version already (the first embedding batch).
    assert pipeline.advance(claimed) == 0
    assert pipeline.advance(claimed, 0) is not None
    embedded = set(
        Embedding.objects.filter(version_id=job.version_id).values_list("image_id", flat=True)
    )
    ids = sorted(searchable.images.values_list("pk", flat=True))
    gone = [min(embedded), ids[-1], ids[-2]]
    pipeline.release(claimed)
    with django_capture_on_commit_callbacks(execute=True):
        deletion.delete_images(searchable, gone, by=admin)
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    vectors = Embedding.objects.filter(version_id=job.version_id)
    assert vectors.count() == 21
    assert not vectors.filter(image_id__in=gone).exists()
    searchable.refresh_from_db()
    assert searchable.active_version_id == job.version_id


@pytest.mark.django_db
def test_deleting_a_collection_removes_its_checkpoints_and_indexes(
    searchable, admin, settings, django_capture_on_commit_callbacks
) -> None:
    job = run_to_end(actions.start_training(searchable, admin, minutes=0.01, run_here=True))
    assert job.status == Job.Status.DONE, job.error
    trained = job.version_or_fail()
    # Version 1's fitted head and version 2's trained one.
    checkpoints = [versions.checkpoint_dir(v) for v in searchable.versions.all()]
    assert len(checkpoints) == 2 and all(c.is_dir() for c in checkpoints)
    assert indexes.build_index(trained, force=True)
    with django_capture_on_commit_callbacks(execute=True):
        counts = deletion.delete_collection(searchable, by=admin)
    assert counts["images"] == 24 and counts["model checkpoints"] == 2 and counts["jobs"] == 1
    assert not any(c.exists() for c in checkpoints) and settings.MODELS_DIR.is_dir()
    assert not indexes.has_index(trained.pk)
    assert not Collection.objects.filter(pk=searchable.pk).exists()


def measured(version_maps: dict[int, float]):
    """An evaluate_version that reports the given mAP@100 per version number, as if from 200
    labelled queries (what the guard needs to trust a difference)."""

    def evaluate(version: ModelVersion) -> dict[str, float]:
        return {"map_at_100": version_maps[version.number], "label_queries": 200}

    return evaluate


@pytest.mark.django_db
def test_an_automatic_retraining_clearly_worse_on_the_labels_stays_inactive(
    searchable, monkeypatch
) -> None:
    monkeypatch.setattr(pipeline, "evaluate_version", measured({1: 0.50, 2: 0.40}))
    old = searchable.active_version_id
    job = run_to_end(
        actions.start_training(searchable, None, minutes=0.01, run_here=True, automatic=True)
    )
    assert job.status == Job.Status.DONE, job.error
    assert "version 2 kept inactive: mAP@100 0.400" in job.log_tail
    searchable.refresh_from_db()
    assert searchable.active_version_id == old
    kept = job.version_or_fail()
    assert kept.status == ModelVersion.Status.READY  # an admin may still activate it
    actions.activate_version(kept)
    searchable.refresh_from_db()
    assert searchable.active_version_id == kept.pk


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("automatic", "maps"),
    [(False, {1: 0.50, 2: 0.40}), (True, {1: 0.50, 2: 0.49})],
    ids=["asked-for", "within-the-margin"],
)
def test_a_requested_or_not_clearly_worse_version_is_activated(
    searchable, admin, monkeypatch, automatic, maps
) -> None:
    monkeypatch.setattr(pipeline, "evaluate_version", measured(maps))
    job = actions.start_training(
        searchable, None if automatic else admin, minutes=0.01, run_here=True, automatic=automatic
    )
    job = run_to_end(job)
    assert job.status == Job.Status.DONE, job.error
    searchable.refresh_from_db()
    assert searchable.active_version_id == job.version_id


def test_few_labelled_queries_never_count_as_clearly_worse() -> None:
    assert pipeline.clearly_worse(
        {"map_at_100": 0.1, "label_queries": 200}, {"map_at_100": 0.5, "label_queries": 200}
    )
    assert not pipeline.clearly_worse(
        {"map_at_100": 0.1, "label_queries": 20}, {"map_at_100": 0.5, "label_queries": 200}
    )
    assert not pipeline.clearly_worse({"constraint_agreement": 0.2}, {"constraint_agreement": 0.9})


def test_without_labels_enough_held_out_answers_judge_a_retraining() -> None:
    def auc(value: float, same: int = 60, different: int = 90) -> dict[str, float]:
        return {"held_out_auc": value, "held_out_same": same, "held_out_different": different}

    assert pipeline.clearly_worse(auc(0.70), auc(0.80)) == ("AUC", "the held-out answers", 0.7, 0.8)
    assert not pipeline.clearly_worse(auc(0.77), auc(0.80))  # within the margin (noise)
    # An AUC resting on a handful of pairs of one kind is noise.
    assert not pipeline.clearly_worse(auc(0.70, same=2, different=300), auc(0.80, 2, 300))
    # Labels, where both versions have enough, decide before the held-out answers.
    labels = {"map_at_100": 0.5, "label_queries": 200}
    assert not pipeline.clearly_worse({**labels, **auc(0.70)}, {**labels, **auc(0.80)})
