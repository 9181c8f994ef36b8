"""The work behind a job, one short step at a time: train a slice, embed a batch, finish.

A training job goes through phases stored on its row: `training` (slices of at most
AUTORET_TRAIN_SLICE_SECONDS, each resuming from the checkpoint the previous one left), then
`embedding` (batches of AUTORET_EMBED_BATCH images into the new version, never the active one),
then `evaluating` and `activating`, done in the run that embeds the last image. Every step is
idempotent: a redelivered step resumes from the last checkpoint or from the first image without a
vector. See docs/training.md.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from labeling.training import (
    Pairs,
    answers_since,
    held_out_constraints,
    known_constraints,
    split_constraints,
)
from retrieval import embedding, features, queries, versions
from retrieval.autoret.checkpoint import CheckpointError, read_info, save_head_checkpoint
from retrieval.autoret.data import ImageSet
from retrieval.autoret.evaluate import evaluate_retrieval
from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import HeadConfig
from retrieval.autoret.head_training import HeadTrainConfig, train_head, version_one
from retrieval.autoret.model import AutoRet, ModelConfig
from retrieval.autoret.pairs import KnownPairs
from retrieval.autoret.train import Progress, TrainConfig, train
from retrieval.models import Embedding, Image, ModelVersion
from worker.models import (
    FINETUNE,
    LOG_TAIL_LINES,
    PRETRAINED,
    RECIPES,
    SCRATCH,
    Job,
    TrainingPolicy,
)

log = logging.getLogger(__name__)

# Shares of the progress bar: training dominates the wall time, embedding follows. A head on
# pretrained features spends the first FEATURE_SHARE on images still without features.
TRAIN_SHARE = 0.8
EMBED_SHARE = 0.19
FEATURE_SHARE = 0.4

# Progress is written at most this often (a GPU reports many steps a second).
WRITE_EVERY_S = 1.0
DATA_FILE = "data.npz"
# An automatic retraining does not activate a version clearly worse than the active one on the
# imported labels or the held-out answers (clearly_worse): on emoji, training on mutual
# neighbours fell far below version 1 (docs/benchmarks.md). Someone who asks for training gets
# what they asked for.
GUARD_MARGIN = 0.02
GUARD_MIN_QUERIES = 50
# Where there are no labels, held-out answers (TrainingPolicy.held_out_percent) judge: the AUC
# of at least this many "same" and as many "different" pairs, measured on the same pairs for
# both versions, lower by more than GUARD_AUC_MARGIN. On Fashion-MNIST's 106 held-out pairs
# after 500 answers, consecutive versions' AUCs differed by up to 0.03 while mAP rose
# (docs/benchmarks.md): only a larger drop says more than noise. On emoji, merge-gain's first
# 500 answers held out a single "same" pair at 20 %.
GUARD_MIN_HELD_OUT = 30
GUARD_AUC_MARGIN = 0.05
# (metric, its name, measured on, the counts it rests on, the least of each trusted, margin),
# in order.
GUARD_MEASURES = (
    (
        "map_at_100",
        "mAP@100",
        "the imported labels",
        ("label_queries",),
        GUARD_MIN_QUERIES,
        GUARD_MARGIN,
    ),
    (
        "held_out_auc",
        "AUC",
        "the held-out answers",
        ("held_out_same", "held_out_different"),
        GUARD_MIN_HELD_OUT,
        GUARD_AUC_MARGIN,
    ),
)
# Held-out evaluation on imported labels: this share of labelled images are queries, the rest
# the database they search.
QUERY_SHARE = 0.2
MAX_QUERIES = 1000


def claim(job_id: int, lease: str) -> Job | None:
    """The job if it still has work and nobody else holds it; None makes the task a no-op."""
    now = timezone.now()
    claimed = (
        Job.objects.filter(pk=job_id, status__in=Job.ACTIVE)
        .filter(Q(lease="") | Q(lease=lease))
        .update(
            status=Job.Status.RUNNING,
            lease=lease,
            heartbeat_at=now,
            started_at=Coalesce(F("started_at"), now),
        )
    )
    if not claimed:
        return None
    return Job.objects.select_related("collection", "version").get(pk=job_id)


def release(job: Job) -> None:
    """Lets the next queued step claim the job (called before it is enqueued)."""
    Job.objects.filter(pk=job.pk, lease=job.lease).update(lease="")


def note(job: Job, line: str, **fields: Any) -> None:
    """Appends a log line and saves `fields` on the job."""
    stamp = timezone.now().strftime("%H:%M:%S")
    lines = [*job.log_tail.splitlines(), f"{stamp} {line}"][-LOG_TAIL_LINES:]
    job.log_tail = "\n".join(lines)
    for name, value in fields.items():
        setattr(job, name, value)
    job.heartbeat_at = timezone.now()
    job.save(update_fields=["log_tail", "heartbeat_at", *fields])
    log.info("job %s: %s", job.pk, line)


def _cancel_requested(job: Job) -> bool:
    return Job.objects.filter(pk=job.pk, cancel_requested=True).exists()


def advance(job: Job, after_id: int = 0, progress_bar: bool = False) -> int | None:
    """Does one step of `job`. Returns the cursor for the next step, or None when the job ended
    (done, cancelled or failed: recorded on the row, never raised, so nothing retries forever)."""
    try:
        if _cancel_requested(job):
            _end_cancelled(job)
            return None
        if job.kind == Job.Kind.TRAIN and job.phase in ("", "queued", "training"):
            outcome = _train_slice(job, progress_bar)
            if outcome == "cancelled":
                _end_cancelled(job)
                return None
            if outcome == "done":
                ModelVersion.objects.filter(jobs=job).update(status=ModelVersion.Status.EMBEDDING)
                note(job, "training finished; embedding the collection", phase="embedding")
            return 0
        return _embed_step(job, after_id, progress_bar)
    except Exception as error:
        log.exception("job %s failed", job.pk)
        _end_failed(job, error)
        return None


def run_here(job: Job, progress_bar: bool = True) -> Job:
    """Runs a job to its end in this process (the management commands), through the same steps
    the worker takes."""
    lease = f"cli-{os.getpid()}"
    after: int | None = 0
    try:
        while after is not None:
            claimed = claim(job.pk, lease)
            if claimed is None:
                break
            after = advance(claimed, after, progress_bar)
    except KeyboardInterrupt:
        # Ctrl-C: no worker will pick this job up again, so it must not block the collection.
        job.refresh_from_db()
        _end_cancelled(job)
        raise
    Job.objects.filter(pk=job.pk, lease=lease).update(lease="")
    job.refresh_from_db()
    return job


# Training ------------------------------------------------------------------------------------


def _recipe(job: Job, version: ModelVersion) -> str:
    """What the version trains: a version that already records a network keeps it."""
    if "model" in version.config:
        return FINETUNE if version.config["model"].get("pretrained") else SCRATCH
    if "features" in version.config:
        return PRETRAINED
    recipe = str(job.options.get("recipe") or PRETRAINED)
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return recipe


def _record_config(version: ModelVersion, values: dict[str, Any]) -> None:
    version.config = {**version.config, **values}
    ModelVersion.objects.filter(pk=version.pk).update(config=version.config)


def _model_config(version: ModelVersion, recipe: str) -> ModelConfig:
    if "model" not in version.config:
        if recipe == FINETUNE:
            size = FeatureConfig().input_size
            model = ModelConfig(
                backbone="efficientnet_lite0", pretrained=True, image_size=size, in_channels=3
            ).to_dict()
        else:
            model = versions.initial_model_config(version.collection)
        _record_config(version, {"model": model})
    return ModelConfig.from_dict(version.config["model"])


def _training_data(
    job: Job, version: ModelVersion, config: ModelConfig, out_dir: Path
) -> tuple[ImageSet, KnownPairs | None]:
    """The images and known pairs of the first slice, frozen into out_dir/data.npz so every later
    slice (and a resumed one) trains on exactly the same rows, whatever was uploaded since."""
    path = out_dir / DATA_FILE
    if not path.is_file():
        size = config.image_size or versions.INITIAL_IMAGE_SIZE
        images = Image.objects.filter(collection=job.collection).order_by("pk")
        ids, pixels, failed = embedding.load_pixels(images, size, config.in_channels)
        if not ids:
            raise ValueError("the collection has no readable images to train on")
        row = {image_id: i for i, image_id in enumerate(ids)}
        held_out = TrainingPolicy.held_out_percent_of(job.collection_id)
        _record_config(version, {"held_out_percent": held_out})
        must, cannot = known_constraints(job.collection, held_out)
        must_rows = [(row[a], row[b]) for a, b in must if a in row and b in row]
        cannot_rows = [(row[a], row[b]) for a, b in cannot if a in row and b in row]
        out_dir.mkdir(parents=True, exist_ok=True)
        # np.savez appends .npz to names without it, so the temporary name keeps that suffix.
        temporary = out_dir / f"{DATA_FILE}.tmp.npz"
        np.savez(
            temporary,
            ids=np.asarray(ids, dtype=np.int64),
            pixels=pixels,
            must=np.asarray(must_rows, dtype=np.int64).reshape(-1, 2),
            cannot=np.asarray(cannot_rows, dtype=np.int64).reshape(-1, 2),
        )
        os.replace(temporary, path)
        note(job, f"training data: {len(ids)} images, {len(failed)} unreadable skipped")
    with np.load(path) as stored:
        pixels, must_array, cannot_array = stored["pixels"], stored["must"], stored["cannot"]
    data = ImageSet.from_arrays(pixels.transpose(0, 2, 3, 1))
    known = None
    if len(must_array) or len(cannot_array):
        known = KnownPairs.from_constraints(
            len(data),
            [tuple(p) for p in must_array.tolist()],
            [tuple(p) for p in cannot_array.tolist()],
        )
    return data, known


def _train_config(job: Job, progress_bar: bool) -> TrainConfig:
    on_cuda = torch.cuda.is_available()
    return TrainConfig(
        minutes=float(job.options.get("minutes", settings.AUTORET_TRAIN_MINUTES)),
        batch_size=settings.AUTORET_TRAIN_BATCH_SIZE,
        device="cuda" if on_cuda else "cpu",
        checkpoint_every_s=float(settings.AUTORET_CHECKPOINT_SECONDS),
        seed=job.version.number if job.version else 0,
        # The callback is where cancel is noticed: every step on a CPU (seconds each); on a GPU
        # every few steps, as each report waits for the device.
        log_every=10 if on_cuda else 1,
        progress_bar=progress_bar,
    )


def _write_progress(job: Job, p: Progress, progress: float, metrics: dict[str, Any]) -> bool:
    """Stores a training's progress, ETA and metrics on its job row (the job page polls it) and
    says whether someone asked to cancel."""
    Job.objects.filter(pk=job.pk).update(
        progress=progress, eta_s=p.eta_s, metrics=metrics, heartbeat_at=timezone.now()
    )
    return _cancel_requested(job)


def _train_slice(job: Job, progress_bar: bool) -> str:
    """Trains for at most one slice from the last checkpoint: "more", "done" or "cancelled"."""
    version = job.version
    if version is None:
        raise ValueError("a training job needs its model version")
    recipe = _recipe(job, version)
    if recipe == PRETRAINED:
        return _train_head(job, version)
    out_dir = versions.checkpoint_dir(version)
    config = _model_config(version, recipe)
    data, known = _training_data(job, version, config, out_dir)
    cfg = _train_config(job, progress_bar)
    try:
        info = read_info(out_dir)
    except CheckpointError:
        info = {"step": 0, "loss_history": []}
    from_step = int(info["step"])
    # The curve restarts from what the checkpoint saw: steps after it are trained again.
    history = [{"step": h["step"], "loss": h["loss"]} for h in info.get("loss_history", [])]
    slices = [*job.metrics.get("slices", []), {"from_step": from_step, "first_step": None}]
    job.metrics = {
        **job.metrics,
        "loss": history,
        "slices": slices,
        "known_pairs": known.counts() if known is not None else {},
    }
    job.options = {**job.options, "device": cfg.device}
    where = f"from step {from_step}" if from_step else "from scratch"
    note(job, f"training slice {len(slices)} {where} on {cfg.device}", phase="training")
    job.save(update_fields=["metrics", "options"])

    torch.manual_seed(cfg.seed)
    model = AutoRet(config)
    slice_end = time.monotonic() + settings.AUTORET_TRAIN_SLICE_SECONDS
    stop: dict[str, str] = {}
    last_write = 0.0

    def callback(p: Progress) -> bool:
        nonlocal last_write
        history.append({"step": p.step, "loss": p.loss})
        if slices[-1]["first_step"] is None:
            slices[-1]["first_step"] = p.step
        now = time.monotonic()
        if now >= slice_end:
            stop["why"] = "slice"
        elif now - last_write < WRITE_EVERY_S and p.fraction_done < 1.0:
            return True
        last_write = now
        metrics = {**job.metrics, "loss": history, "slices": slices}
        if _write_progress(job, p, TRAIN_SHARE * p.fraction_done, metrics):
            stop["why"] = "cancelled"
        return not stop

    result = train(model, data, cfg, out_dir, known, callback, resume=True)
    job.metrics = {**job.metrics, "loss": history, "slices": slices}
    job.save(update_fields=["metrics"])
    if stop.get("why") == "cancelled":
        return "cancelled"
    if stop.get("why") == "slice":
        note(job, f"slice ended at step {result.steps}; checkpoint saved, next slice queued")
        return "more"
    summary = {
        "steps": result.steps,
        "epochs": round(result.epochs, 3),
        "images_seen": result.images_seen,
        "elapsed_s": round(result.elapsed_s, 1),
        "images_per_s": round(result.images_per_s, 1),
        "final_loss": result.final_loss,
        "known_pairs": result.known_pairs or {},
        "device": cfg.device,
    }
    version.config = {**version.config, "train": cfg.to_dict(), "images": len(data)}
    version.metrics = {**version.metrics, "training": summary, "loss": history}
    version.save(update_fields=["config", "metrics"])
    note(job, f"trained {result.steps} steps, final loss {result.final_loss:.4g}", progress=0.8)
    return "done"


def _known_rows(
    collection_id: int, ids: list[int], held_out_percent: int
) -> tuple[KnownPairs | None, dict[str, int]]:
    """The collection's resolved answers and imports, less the held-out ones, as pairs of rows
    of `ids`."""
    row = {image_id: i for i, image_id in enumerate(ids)}
    must, cannot = known_constraints(collection_id, held_out_percent)
    must_rows = [(row[a], row[b]) for a, b in must if a in row and b in row]
    cannot_rows = [(row[a], row[b]) for a, b in cannot if a in row and b in row]
    if not must_rows and not cannot_rows:
        return None, {}
    known = KnownPairs.from_constraints(len(ids), must_rows, cannot_rows)
    return known, known.counts()


def _train_head(job: Job, version: ModelVersion) -> str:
    """The default recipe (issue 13): features for images still without them (a batch per step,
    so a killed worker resumes where it stopped), then the head fitted and trained on the cached
    features alone, in one step: "more", "done" or "cancelled"."""
    if "features" not in version.config:
        config = features.default_version_config()
        _record_config(version, {"features": config["features"], "head": config["head"]})
    feature_cfg = FeatureConfig.from_dict(version.config["features"])
    head_cfg = HeadConfig.from_dict(version.config["head"])
    collection = job.collection
    filled = features.fill(
        collection,
        feature_cfg,
        limit=settings.AUTORET_EMBED_BATCH,
        stop=lambda: _cancel_requested(job),
    )
    if not filled.finished:
        if _cancel_requested(job):
            return "cancelled"
        done, total = features.counts(collection, feature_cfg)
        note(
            job,
            f"features {done}/{total} images ({feature_cfg.key})",
            phase="training",
            progress=FEATURE_SHARE * done / max(total, 1),
        )
        return "more"
    ids, array = features.read_all(collection, feature_cfg)
    if len(ids) < 2:
        raise ValueError("the collection needs at least two readable images to train on")
    held_out = TrainingPolicy.held_out_percent_of(collection.pk)
    known, known_counts = _known_rows(collection.pk, ids, held_out)
    on_cuda = torch.cuda.is_available()
    minutes = float(job.options.get("minutes", settings.AUTORET_TRAIN_MINUTES))
    cfg = HeadTrainConfig(
        seconds=minutes * 60,
        seed=version.number,
        device="cuda" if on_cuda else "cpu",
        log_every=10,
    )
    answers = answers_since(collection, None)
    job.options = {**job.options, "device": cfg.device, "recipe": PRETRAINED}
    job.metrics = {**job.metrics, "known_pairs": known_counts}
    job.save(update_fields=["options", "metrics"])
    note(
        job,
        f"training the head on {len(ids)} images' cached features, {answers} answers, "
        f"on {cfg.device}",
        phase="training",
        progress=FEATURE_SHARE,
    )
    tensor = torch.from_numpy(array)
    model = version_one(tensor, feature_cfg, head_cfg, seed=features.SEED)
    history: list[dict[str, float]] = []
    last_write = 0.0
    cancelled = False

    def callback(p: Progress) -> bool:
        nonlocal last_write, cancelled
        history.append({"step": p.step, "loss": p.loss})
        now = time.monotonic()
        if now - last_write < WRITE_EVERY_S and p.fraction_done < 1.0:
            return True
        last_write = now
        progress = FEATURE_SHARE + (TRAIN_SHARE - FEATURE_SHARE) * p.fraction_done
        cancelled = _write_progress(job, p, progress, {**job.metrics, "loss": history})
        return not cancelled

    result = train_head(model.head, tensor, cfg, known, callback)
    job.metrics = {**job.metrics, "loss": history}
    job.save(update_fields=["metrics"])
    if cancelled:
        return "cancelled"
    summary = {
        "steps": result.steps,
        "elapsed_s": round(result.elapsed_s, 1),
        "final_loss": result.final_loss,
        "neighbor_images": result.neighbor_images,
        "group_images": result.group_images,
        "pseudo_images": result.pseudo_images,
        "known_share": result.known_share,
        "fit": model.head.fit_report,
        "neighbors": result.neighbors or "not asked for",
        "known_pairs": known_counts,
        "device": cfg.device,
        "stopped": result.stopped,
    }
    save_head_checkpoint(
        versions.checkpoint_dir(version),
        model.to("cpu"),
        step=result.steps,
        train_config=cfg.to_dict(),
        metrics=summary,
        loss_history=history,
        elapsed_s=result.elapsed_s,
    )
    version.config = {
        **version.config,
        "train": cfg.to_dict(),
        "images": len(ids),
        "answers": answers,
        "held_out_percent": held_out,
    }
    version.metrics = {**version.metrics, "training": summary, "loss": history}
    version.save(update_fields=["config", "metrics"])
    note(
        job,
        f"trained {result.steps} steps in {result.elapsed_s:.1f} s, "
        f"final loss {result.final_loss:.4g}; {summary['neighbors']}",
        progress=TRAIN_SHARE,
    )
    return "done"


# Embedding, evaluation, activation -----------------------------------------------------------


def _embed_step(job: Job, after_id: int, progress_bar: bool) -> int | None:
    collection = job.collection
    version = job.version
    if version is None:
        version = versions.ensure_initial_version(collection)
        job.version = version
        job.save(update_fields=["version"])
    total = max(collection.images.count(), 1)
    started = time.monotonic()
    result = embedding.embed_new_images(
        collection,
        after_id=after_id,
        limit=settings.AUTORET_EMBED_BATCH,
        version=version,
        stop=lambda: _cancel_requested(job),
        progress_bar=progress_bar,
    )
    if result.phase == "features":
        done, total = features.counts(
            collection, features.feature_config(version) or FeatureConfig()
        )
        note(
            job,
            f"features {done}/{total} images",
            phase="features",
            progress=FEATURE_SHARE * min(done / max(total, 1), 1.0),
        )
        if result.next_after is None:
            _end(job, Job.Status.DONE, "done", "waiting for a second readable image")
            return None
        if _cancel_requested(job):
            _end_cancelled(job)
            return None
        return result.next_after
    done = Embedding.objects.filter(version=version).count()
    rate = result.embedded / max(time.monotonic() - started, 1e-6)
    base = TRAIN_SHARE if job.kind == Job.Kind.TRAIN else 0.0
    share = EMBED_SHARE if job.kind == Job.Kind.TRAIN else 0.99
    note(
        job,
        f"embedded {done}/{total} images"
        + (f", {len(result.failed)} unreadable skipped" if result.failed else ""),
        phase="embedding",
        progress=base + share * min(done / total, 1.0),
        eta_s=(total - done) / rate if rate > 0 else None,
    )
    if not result.finished:
        if _cancel_requested(job):
            _end_cancelled(job)
            return None
        return result.next_after
    if job.kind == Job.Kind.TRAIN:
        _finish_training(job, version)
        return None
    if result.activated:
        # Version 1 is measured as soon as it answers searches: the Models page's first point.
        note(job, "evaluating", phase="evaluating")
        record_evaluation(version.pk)
    _end(job, Job.Status.DONE, "done", "embedding finished")
    return None


def _finish_training(job: Job, version: ModelVersion) -> None:
    # embed_new_images built the index when the walk ended; the switch comes last, so search
    # answers from the old version until this one is complete and measured.
    note(job, "evaluating", phase="evaluating")
    version.metrics = {**version.metrics, "evaluation": evaluate_version(version)}
    version.save(update_fields=["metrics"])
    previous = job.collection.active_version
    automatic = bool(job.options.get("automatic"))
    measured_now = {version.pk}
    if previous is not None and ("evaluation" not in previous.metrics or automatic):
        # An automatic retraining compares on today's images and labels, not those of the day
        # the old version was measured.
        previous.metrics = {**previous.metrics, "evaluation": evaluate_version(previous)}
        previous.save(update_fields=["metrics"])
        measured_now.add(previous.pk)
    remeasure_held_out(job.collection_id, measured_now)
    if _cancel_requested(job):
        _end_cancelled(job)
        return
    version.refresh_from_db()
    versions.complete(version)
    if automatic and previous is not None:
        new, old = version.metrics["evaluation"], previous.metrics["evaluation"]
        worse = clearly_worse(new, old)
        if worse is not None:
            name, where, now, before = worse
            job.metrics = {**job.metrics, "evaluation": new}
            job.save(update_fields=["metrics"])
            _end(
                job,
                Job.Status.DONE,
                "done",
                f"version {version.number} kept inactive: {name} {now:.3f} on {where}, below "
                f"version {previous.number}'s {before:.3f}; an admin can still activate it on "
                "the Models page",
            )
            return
    note(job, "activating", phase="activating")
    versions.activate(version)
    job.metrics = {**job.metrics, "evaluation": version.metrics["evaluation"]}
    job.save(update_fields=["metrics"])
    _end(job, Job.Status.DONE, "done", f"version {version.number} is active")


def clearly_worse(new: dict[str, Any], old: dict[str, Any]) -> tuple[str, str, float, float] | None:
    """Whether a version measured `new` is clearly worse than one measured `old`, as (the
    measure, where, its new value, its old value) for the log, else None. The first of
    GUARD_MEASURES that both measured on enough queries or pairs decides: lower by more than its
    margin is clearly worse. Fewer make the difference noise; and answers a version
    trained on say nothing, so without labels or held-out answers nothing is clearly worse."""
    for key, name, where, counts, least, margin in GUARD_MEASURES:
        trusted = all(m.get(count, 0) >= least for m in (new, old) for count in counts)
        if trusted and new.get(key) is not None and old.get(key) is not None:
            worse = float(new[key]) < float(old[key]) - margin
            return (name, where, float(new[key]), float(old[key])) if worse else None
    return None


def record_evaluation(version_id: int) -> None:
    """Measures a version (evaluate_version) and stores the result in its metrics."""
    version = ModelVersion.objects.get(pk=version_id)
    version.metrics = {**version.metrics, "evaluation": evaluate_version(version)}
    version.save(update_fields=["metrics"])


def evaluate_version(version: ModelVersion) -> dict[str, Any]:
    """mAP@100 on imported labels (held out: a seeded fifth of the labelled images query the
    rest) and constraint agreement (answered pairs on the right side of alpha/2)."""
    metrics: dict[str, Any] = {}
    labelled = dict(
        Image.objects.filter(collection_id=version.collection_id)
        .exclude(label="")
        .values_list("pk", "label")
    )
    if len(set(labelled.values())) >= 2:
        rows = list(
            Embedding.objects.filter(version=version, image_id__in=list(labelled)).values_list(
                "image_id", "vector"
            )
        )
        if len(rows) >= 10:
            ids = [image_id for image_id, _ in rows]
            vectors = np.stack([np.asarray(vector, dtype=np.float32) for _, vector in rows])
            names = sorted({labelled[i] for i in ids})
            labels = np.asarray([names.index(labelled[i]) for i in ids])
            order = np.random.default_rng(0).permutation(len(ids))
            n_queries = min(MAX_QUERIES, max(1, int(len(ids) * QUERY_SHARE)))
            q, db = order[:n_queries], order[n_queries:]
            result = evaluate_retrieval(
                vectors[q], labels[q], vectors[db], labels[db], k=100, precision_k=10
            )
            metrics["map_at_100"] = round(result["map"], 4)
            metrics["p_at_10"] = round(result["precision"], 4)
            metrics["label_queries"] = result["queries"]
    held_out = TrainingPolicy.held_out_percent_of(version.collection_id)
    trained_pairs, kept_pairs = split_constraints(version.collection_id, held_out)
    trained = pair_metrics(version, *trained_pairs)
    if trained:
        metrics["constraint_agreement"] = trained["agreement"]
        metrics["answered_pairs"] = trained["pairs"]
    if held_out:
        metrics |= _held_out_measures(version, held_out, kept_pairs)
    return metrics


def _held_out_measures(
    version: ModelVersion, percent: int, kept: tuple[Pairs, Pairs]
) -> dict[str, Any]:
    """The evaluation's held_out_* entries: `version` measured on the pairs kept out."""
    measured = pair_metrics(version, *kept)
    return {"held_out_percent": percent, **{f"held_out_{k}": v for k, v in measured.items()}}


def remeasure_held_out(collection_id: int, measured: set[int]) -> None:
    """Every other ready version measured again on today's held-out answers, so that the models
    page compares versions on one set of pairs: the set grows with the answers, and the newer
    pairs, mined where the model was unsure, are harder (Fashion-MNIST: each new version scored
    0.87-0.98 on the pairs held out when it trained, falling as answers came, while mAP rose; on
    the 106 held out after 500 answers version 1 scores 0.79, the newest 0.87;
    docs/benchmarks.md). With no share held out any more, the versions lose their held-out
    measures, which no longer compare with anything."""
    held_out = TrainingPolicy.held_out_percent_of(collection_id)
    kept = held_out_constraints(collection_id, held_out) if held_out else None
    others = ModelVersion.objects.filter(
        collection_id=collection_id, status=ModelVersion.Status.READY
    ).exclude(pk__in=measured)
    for other in others:
        before = other.metrics.get("evaluation") or {}
        evaluation = {k: v for k, v in before.items() if not k.startswith("held_out_")}
        if kept is not None:
            evaluation |= _held_out_measures(other, held_out, kept)
        if evaluation != before:
            other.metrics = {**other.metrics, "evaluation": evaluation}
            other.save(update_fields=["metrics"])


def pair_metrics(version: ModelVersion, must: Pairs, cannot: Pairs) -> dict[str, Any]:
    """Answered pairs measured in `version` ({} when no pair has both images embedded):
    `agreement`, the share on the right side of alpha/2 (must-links closer, cannot-links
    farther); `pairs`, `same` and `different`, how many were measured; and, with both kinds,
    `auc`, the chance that a cannot-link pair lies farther apart than a must-link pair (ties
    half)."""
    distances = queries.pair_distances(version, [*must, *cannot])
    if not distances:
        return {}
    alpha = versions.alpha_of(version)
    near = np.asarray([distances[p] for p in must if p in distances], dtype=np.float64)
    far = np.asarray([distances[p] for p in cannot if p in distances], dtype=np.float64)
    right = int((near < alpha / 2).sum() + (far > alpha / 2).sum())
    out: dict[str, Any] = {
        "agreement": round(right / len(distances), 4),
        "pairs": len(distances),
        "same": len(near),
        "different": len(far),
    }
    if len(near) and len(far):
        near.sort()
        below = np.searchsorted(near, far, side="left")
        ties = np.searchsorted(near, far, side="right") - below
        out["auc"] = round(float((below + 0.5 * ties).sum() / (len(near) * len(far))), 4)
    return out


# Endings -------------------------------------------------------------------------------------


def _end(job: Job, status: str, phase: str, line: str) -> None:
    done = status == Job.Status.DONE
    note(
        job,
        line,
        status=status,
        phase=phase,
        finished_at=timezone.now(),
        lease="",
        eta_s=None,
        progress=1.0 if done else job.progress,
    )


def _abandon_version(job: Job) -> None:
    """A training job that ends without activating gives up its version (versions.abandon); a
    failed version's checkpoint goes too: nothing resumes it (a new training makes a new one)."""
    if job.kind != Job.Kind.TRAIN or job.version_id is None:
        return
    if versions.abandon(job.version_id):
        versions.remove_checkpoint(ModelVersion.objects.get(pk=job.version_id))


def _end_cancelled(job: Job) -> None:
    _abandon_version(job)
    _end(job, Job.Status.CANCELLED, "cancelled", "cancelled")


def _end_failed(job: Job, error: Exception) -> None:
    _abandon_version(job)
    job.error = f"{type(error).__name__}: {error}"
    job.save(update_fields=["error"])
    _end(job, Job.Status.FAILED, "failed", f"failed: {job.error}")
