"""Health, and the models and jobs pages: train, watch, cancel, activate, roll back, free space.

Members of a collection see its models and jobs; starting, cancelling, activating and deleting
need its admin role (retrieval.permissions).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from retrieval.models import Collection, Membership, ModelVersion
from retrieval.permissions import (
    get_collection_for_user,
    get_in_collection_for_user,
    role_in,
    visible_collections,
)
from worker import actions
from worker.health import system_health
from worker.models import (
    FINETUNE,
    MAX_HELD_OUT_PERCENT,
    PRETRAINED,
    SCRATCH,
    Job,
    TrainingPolicy,
)

# Points drawn in a loss curve: enough for its shape, few enough for a light page.
CURVE_POINTS = 200
JOBS = Job.objects.select_related("collection", "version")
CURVE_WIDTH, CURVE_HEIGHT = 600, 160


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 only when the database, Redis and at least one worker are up; 503 otherwise."""
    report = system_health()
    return JsonResponse(report, status=200 if report["ok"] else 503)


@login_required
@never_cache
@require_GET
def status(request: HttpRequest) -> HttpResponse:
    """The health of the parts, for people: the collections page loads it as a fragment."""
    fragment = request.htmx  # type: ignore[attr-defined]  # django-htmx's middleware sets it
    template = "worker/status.html#status" if fragment else "worker/status.html"
    return render(request, template, {"health": system_health()})


class TrainForm(forms.Form):
    minutes = forms.FloatField(min_value=0.01, max_value=24 * 60, required=False)
    recipe = forms.ChoiceField(
        choices=[
            (PRETRAINED, "head on ImageNet features (default, seconds)"),
            (SCRATCH, "from-scratch network, 32 px"),
            (FINETUNE, "fine-tune the ImageNet backbone (GPU workers)"),
        ],
        required=False,
    )


class PolicyForm(forms.Form):
    retrain_after_answers = forms.IntegerField(
        min_value=0,
        # The column is a PostgreSQL integer: more is "integer out of range", a 500.
        max_value=2**31 - 1,
        required=False,
        label="Retrain automatically after this many new answers (0: never; empty: the "
        "site's default)",
    )
    minutes = forms.FloatField(
        min_value=0.01, max_value=24 * 60, required=False, label="Training minutes"
    )
    held_out_percent = forms.IntegerField(
        min_value=0,
        max_value=MAX_HELD_OUT_PERCENT,
        required=False,
        label=f"Answers kept out of training to measure versions on, % (0 to "
        f"{MAX_HELD_OUT_PERCENT}; empty: 0)",
    )


def loss_curve(history: list[dict[str, float]]) -> dict[str, Any] | None:
    """An SVG polyline of the loss against the step, scaled into CURVE_WIDTH x CURVE_HEIGHT."""
    if len(history) < 2:
        return None
    stride = max(1, len(history) // CURVE_POINTS)
    points = history[::stride]
    if points[-1] is not history[-1]:
        points.append(history[-1])
    steps = [p["step"] for p in points]
    losses = [p["loss"] for p in points]
    low, high = min(losses), max(losses)
    first, last = steps[0], steps[-1]
    span_x = max(last - first, 1)
    span_y = max(high - low, 1e-12)
    xy = " ".join(
        f"{(s - first) / span_x * CURVE_WIDTH:.1f},{(1 - (v - low) / span_y) * CURVE_HEIGHT:.1f}"
        for s, v in zip(steps, losses, strict=True)
    )
    return {
        "points": xy,
        "width": CURVE_WIDTH,
        "height": CURVE_HEIGHT,
        "low": low,
        "high": high,
        "first_step": first,
        "last_step": last,
    }


# What the quality plot draws, in order of preference: retrieval on imported labels, else how
# well distances separate the held-out answers.
# (key, short name, caption)
QUALITY_METRICS = (
    ("map_at_100", "mAP@100", "mAP@100 on imported labels"),
    ("held_out_auc", "held-out AUC", "AUC on held-out answers"),
)


def quality_curve(rows: list[actions.VersionRow]) -> dict[str, Any] | None:
    """Each measured version's quality against the answers it was trained with (version 1:
    none), as SVG points scaled into CURVE_WIDTH x CURVE_HEIGHT: mAP@100 on imported labels
    where versions have it, else the AUC of the held-out answers (QUALITY_METRICS)."""
    live = [row.version for row in rows if row.version.status != ModelVersion.Status.DELETED]
    for key, name, caption in QUALITY_METRICS:
        measured = sorted(
            (
                int(v.config.get("answers", 0)),
                float(v.metrics["evaluation"][key]),
                v.number,
            )
            for v in live
            if (v.metrics.get("evaluation") or {}).get(key) is not None
        )
        if measured:
            return {**_quality_points(measured), "name": name, "caption": caption}
    return None


def _quality_points(measured: list[tuple[int, float, int]]) -> dict[str, Any]:
    """(answers, quality, version number) rows, sorted, as the quality plot's SVG points."""
    most_answers = max(max(a for a, _, _ in measured), 1)
    low = min(q for _, q, _ in measured)
    high = max(q for _, q, _ in measured)
    floor, span = max(0.0, low - 0.05), max(high - low + 0.1, 1e-6)
    points = [
        {
            "x": round(a / most_answers * CURVE_WIDTH, 1),
            "y": round((1 - (q - floor) / span) * CURVE_HEIGHT, 1),
            "answers": a,
            "quality": q,
            "number": n,
        }
        for a, q, n in measured
    ]
    return {
        "points": points,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
        "width": CURVE_WIDTH,
        "height": CURVE_HEIGHT,
        "most_answers": most_answers,
        "low": low,
        "high": high,
    }


def _models_page(
    request: HttpRequest,
    collection: Collection,
    train_form: TrainForm | None = None,
    status: int = 200,
) -> HttpResponse:
    rows = actions.version_rows(collection)
    policy = TrainingPolicy.objects.filter(collection=collection).first()
    latest_trained = next((r.version for r in rows if r.version.metrics.get("loss")), None)
    context = {
        "collection": collection,
        "rows": rows,
        "running": actions.active_training(collection),
        "is_admin": role_in(request.user, collection) == Membership.Role.ADMIN,
        "train_form": train_form or TrainForm(),
        "policy_form": PolicyForm(
            initial={
                "retrain_after_answers": policy.retrain_after_answers if policy else None,
                "minutes": policy.minutes if policy else None,
                "held_out_percent": policy.held_out_percent if policy else 0,
            }
        ),
        "default_minutes": actions.default_minutes(collection),
        "default_retrain": settings.AUTORET_RETRAIN_AFTER_ANSWERS,
        "curve": loss_curve(latest_trained.metrics["loss"]) if latest_trained else None,
        "curve_version": latest_trained,
        "quality": quality_curve(rows),
        "jobs": Job.objects.filter(collection=collection)[:10],
    }
    return render(request, "worker/models.html", context, status=status)


@login_required
@require_GET
def models_page(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    return _models_page(request, collection)


@login_required
@require_POST
def train(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.ADMIN)
    form = TrainForm(request.POST)
    if not form.is_valid():
        return _models_page(request, collection, form, status=400)
    user: User = request.user  # type: ignore[assignment]  # login_required: never anonymous
    try:
        job = actions.start_training(
            collection,
            user,
            form.cleaned_data["minutes"],
            recipe=form.cleaned_data["recipe"] or PRETRAINED,
        )
    except actions.TrainingAlreadyRunning as refused:
        messages.error(request, str(refused))
        return _models_page(request, collection, form, status=409)
    except actions.TrainingQuota as refused:
        messages.error(request, str(refused))
        return _models_page(request, collection, form, status=403)
    return redirect("worker:job_detail", pk=job.pk)


@login_required
@require_POST
def training_policy(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.ADMIN)
    form = PolicyForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            "The retraining settings need positive numbers, and at most "
            f"{MAX_HELD_OUT_PERCENT} % of the answers held out.",
        )
        return _models_page(request, collection, status=400)
    actions.set_policy(
        collection,
        form.cleaned_data["retrain_after_answers"],
        form.cleaned_data["minutes"],
        form.cleaned_data["held_out_percent"] or 0,
    )
    messages.success(request, "Retraining settings saved.")
    return redirect("worker:models", pk=collection.pk)


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.filter(collection__in=visible_collections(request.user)).select_related(
        "collection", "version", "requested_by"
    )[:100]
    return render(request, "worker/job_list.html", {"jobs": jobs})


@login_required
@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_in_collection_for_user(request.user, JOBS, pk)
    context = {
        "job": job,
        "curve": loss_curve(job.loss_history),
        "is_admin": role_in(request.user, job.collection) == Membership.Role.ADMIN,
    }
    template = "worker/job_detail.html"
    if request.htmx:  # type: ignore[attr-defined]  # django-htmx's middleware sets it
        template += "#progress"
    return render(request, template, context)


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_in_collection_for_user(request.user, JOBS, pk, Membership.Role.ADMIN)
    actions.cancel_job(job, by=request.user)  # type: ignore[arg-type]  # login_required
    messages.info(request, "Cancel requested: the job stops within seconds.")
    return redirect("worker:job_detail", pk=job.pk)


@login_required
@require_POST
def version_activate(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_in_collection_for_user(
        request.user, ModelVersion.objects.all(), pk, Membership.Role.ADMIN
    )
    try:
        actions.activate_version(version, by=request.user)  # type: ignore[arg-type]
    except actions.VersionNotAllowed as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Search now answers from version {version.number}.")
    return redirect("worker:models", pk=version.collection_id)


@login_required
@require_http_methods(["GET", "POST"])
def version_delete_embeddings(request: HttpRequest, pk: int) -> HttpResponse:
    """GET asks for confirmation; POST with confirm=yes deletes."""
    version = get_in_collection_for_user(
        request.user, ModelVersion.objects.all(), pk, Membership.Role.ADMIN
    )
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        try:
            deleted = actions.delete_embeddings(version, by=request.user)  # type: ignore[arg-type]
        except actions.VersionNotAllowed as refused:
            messages.error(request, str(refused))
        else:
            messages.success(request, f"Deleted {deleted} embeddings of version {version.number}.")
        return redirect("worker:models", pk=version.collection_id)
    count = version.embeddings.count()
    return render(
        request,
        "worker/delete_embeddings.html",
        {"version": version, "count": count, "collection": version.collection},
    )
