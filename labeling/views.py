"""Labeling pages: label (answers go through the JSON API, labeling/api.py), its instructions
(admins edit them), groups with the adjudication queue, and the one-to-many form of the
similar-images grid."""

from __future__ import annotations

from math import ceil

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import BadRequest, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from labeling import answers, instructions, pair_queue, strategies
from labeling.api import AnswerRateThrottle
from labeling.inference import infer
from labeling.models import (
    INSTRUCTIONS_MAX,
    QUESTION_MAX,
    Answer,
    Constraint,
    ExamplePair,
    Group,
    Pair,
)
from retrieval.models import Collection, Image, Membership
from retrieval.permissions import get_collection_for_user, role_in

GROUPS_SHOWN = 100
SAMPLES = 8


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]  # login_required: never anonymous here


def _id(request: HttpRequest, field: str) -> int:
    try:
        return int(request.POST.get(field, ""))
    except ValueError:
        raise BadRequest(f"{field} must be an id") from None


def _back(request: HttpRequest) -> str | None:
    back = request.POST.get("next", "")
    return back if url_has_allowed_host_and_scheme(back, {request.get_host()}) else None


@login_required
def label(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(
        request.user, pk, queryset=Collection.objects.select_related("labeling_settings")
    )
    counters = pair_queue.counters(collection, _user(request))
    context: dict[str, object] = {"collection": collection, "counters": counters}
    if request.htmx:  # type: ignore[attr-defined]  # django-htmx's middleware sets it
        return render(request, "labeling/label.html#counters", context)
    labeling = strategies.settings_for(collection)
    examples = instructions.examples_of(collection)
    context |= {
        "labeling": labeling,
        "instructions": instructions.render(labeling.instructions),
        "same_examples": [e for e in examples if e.answer == Answer.SAME],
        "different_examples": [e for e in examples if e.answer == Answer.DIFFERENT],
        "is_admin": (role_in(request.user, collection) or 0) >= Membership.Role.ADMIN,
    }
    return render(request, "labeling/label.html", context)


class InstructionsForm(forms.Form):
    question = forms.CharField(
        max_length=QUESTION_MAX,
        help_text="The Label page's heading, e.g. “Same clothing category?”",
    )
    instructions = forms.CharField(
        max_length=INSTRUCTIONS_MAX,
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12}),
        help_text="Markdown: what counts as the same, borderline cases, what to do when unsure.",
    )


class ExampleForm(forms.Form):
    a = forms.IntegerField(label="First image id", min_value=1)
    b = forms.IntegerField(label="Second image id", min_value=1)
    answer = forms.ChoiceField(choices=ExamplePair.Kind.choices)


@login_required
@require_http_methods(["GET", "POST"])
def edit_instructions(request: HttpRequest, pk: int) -> HttpResponse:
    """Admins say what "same" means: question, Markdown instructions, pinned example pairs. The
    Label page's pin buttons post here too, with `next` pointing back to it."""
    collection = get_collection_for_user(
        request.user,
        pk,
        Membership.Role.ADMIN,
        queryset=Collection.objects.select_related("labeling_settings"),
    )
    labeling = strategies.settings_for(collection)
    text_form = InstructionsForm(
        initial={"question": labeling.question, "instructions": labeling.instructions}
    )
    example_form = ExampleForm()
    action = request.POST.get("action", "")
    if action == "save":
        text_form = InstructionsForm(request.POST)
        if text_form.is_valid():
            instructions.update(collection, _user(request), **text_form.cleaned_data)
            messages.success(request, "Saved the question and the instructions.")
            return redirect("labeling:instructions", pk=collection.pk)
    elif action == "pin":
        example_form = ExampleForm(request.POST)
        if example_form.is_valid():
            try:
                pinned = instructions.pin(
                    collection, _user(request), instructions.Example(**example_form.cleaned_data)
                )
            except ValidationError as refused:
                example_form.add_error(None, refused)
            else:
                messages.success(
                    request, f"Pinned images {pinned.a_id} and {pinned.b_id} as {pinned.answer}."
                )
                return redirect(_back(request) or request.path)
    elif action == "unpin":
        if instructions.unpin(collection, _id(request, "example")):
            messages.success(request, "Unpinned the example.")
        return redirect("labeling:instructions", pk=collection.pk)
    elif request.method == "POST":
        raise BadRequest("action is save, pin or unpin")
    context = {
        "collection": collection,
        "labeling": labeling,
        "preview": instructions.render(labeling.instructions),
        "examples": instructions.examples_of(collection),
        "text_form": text_form,
        "example_form": example_form,
    }
    return render(
        request,
        "labeling/instructions.html",
        context,
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def groups(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    is_curator = (role_in(request.user, collection) or 0) >= Membership.Role.CURATOR
    if request.method == "POST":
        get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
        if "pair" in request.POST:
            pair = get_object_or_404(Pair, pk=_id(request, "pair"), collection=collection)
            ruling = request.POST.get("answer", "")
            if ruling not in Answer.values:
                raise BadRequest("a ruling is same, different or unsure")
            answers.adjudicate(pair, _user(request), ruling)
            messages.success(request, f"Ruled {ruling} on pair {pair.a_id}-{pair.b_id}.")
        else:
            image = get_object_or_404(Image, pk=_id(request, "image"), collection=collection)
            name = request.POST.get("name", "").strip()[:100]
            if not name:
                raise BadRequest("a group name cannot be empty")
            answers.name_group(collection, image, name, _user(request))
            messages.success(request, f"Named the group of {image.original_name} “{name}”.")
        return redirect("labeling:groups", pk=collection.pk)
    inference = infer(collection)
    found = sorted(inference.groups().values(), key=lambda m: (-len(m), m[0]))[:GROUPS_SHOWN]
    sample_ids = [i for members in found for i in members[:SAMPLES]]
    images = Image.objects.in_bulk(sample_ids)
    names = dict(Group.objects.filter(collection=collection).values_list("anchor_id", "name"))
    rows = [
        {
            "size": len(members),
            "anchor": members[0],
            "name": next((names[i] for i in members if i in names), ""),
            "samples": [images[i] for i in members[:SAMPLES] if i in images],
        }
        for members in found
    ]
    flagged = list(
        Pair.objects.filter(collection=collection, flagged=True)
        .select_related("a", "b")
        .order_by("answered_at")[:50]
    )
    said: dict[int, list[str]] = {}
    for c in Constraint.objects.filter(pair__in=flagged).select_related("annotator"):
        who = c.annotator.get_username() if c.annotator else c.annotator_name
        said.setdefault(c.pair_id, []).append(f"{who}: {c.answer}")
    conflicts = [{"pair": p, "answers": said.get(p.pk, [])} for p in flagged]
    context = {
        "collection": collection,
        "groups": rows,
        "group_count": len(inference.groups()),
        "conflicts": conflicts,
        "is_curator": is_curator,
        "implied": inference.implied_count(),
    }
    return render(request, "labeling/groups.html", context)


@login_required
@require_POST
def mark(request: HttpRequest, pk: int) -> HttpResponse:
    """One-to-many from the similar-images grid: the selected images get the same answer."""
    collection = get_collection_for_user(request.user, pk)
    answer = request.POST.get("answer", "")
    if answer not in (Answer.SAME, Answer.DIFFERENT):
        raise BadRequest("mark them same or different")
    try:
        query = int(request.POST.get("query", ""))
        chosen = [int(x) for x in request.POST.getlist("images")]
    except ValueError:
        raise BadRequest("image ids are numbers") from None
    if len(chosen) > answers.MAX_MARKS:
        raise BadRequest(f"mark at most {answers.MAX_MARKS} images at once")
    # Each marked image is an answer against the answer rate, as through the API.
    throttle = AnswerRateThrottle()
    if chosen and not throttle.allow_many(request, len(chosen)):
        wait = ceil(throttle.wait() or 1)
        response = HttpResponse(
            f"Too many answers at once: wait {wait} s, then mark again.",
            content_type="text/plain; charset=utf-8",
            status=429,
        )
        response["Retry-After"] = str(wait)
        return response
    if chosen:
        try:
            stored = answers.mark_many(collection, _user(request), query, chosen, answer)
        except Image.DoesNotExist:
            raise BadRequest("every image must belong to this collection") from None
        messages.success(request, f"Marked {stored} images {answer} as the query.")
    else:
        messages.info(request, "Select some images first.")
    return redirect(_back(request) or reverse("retrieval:similar", args=[collection.pk, query]))
