"""Every URL of the URLconf against the fixed cast: who gets in, who gets 403, who never learns
that a collection exists (404). A URL added without a case here fails
test_every_url_has_a_permission_case."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from PIL import Image as PILImage

from retrieval.models import Collection, Image, Membership, ModelVersion

Role = Membership.Role
PUBLIC = "public"  # anyone, signed in or not
SIGNED_IN = "signed-in"  # any signed-in user; nothing collection-specific


@dataclass(frozen=True)
class Case:
    """How to call one URL and the least role that may."""

    method: str
    needs: int | str  # a collection Role, or PUBLIC / SIGNED_IN
    args: tuple[str, ...] = ()  # names of objects (see `objects`) filling the URL's arguments
    api: bool = False
    may_be_unavailable: bool = False  # 503 is a correct answer (health checks)


CASES: dict[str, Case] = {
    # Site, accounts, schema
    "home": Case("GET", SIGNED_IN),
    "healthz": Case("GET", PUBLIC, may_be_unavailable=True),
    "login": Case("GET", PUBLIC),
    "logout": Case("POST", PUBLIC),
    "password_change": Case("GET", SIGNED_IN),
    "password_change_done": Case("GET", SIGNED_IN),
    "api_token": Case("GET", SIGNED_IN),
    "api-schema": Case("GET", PUBLIC),  # clients and fuzzers read it before they log in
    "api-docs": Case("GET", PUBLIC),  # the page only; the schema it loads needs a login
    # Collections, images, search (retrieval)
    "retrieval:collection_list": Case("GET", SIGNED_IN),
    "retrieval:collection_detail": Case("GET", Role.ANNOTATOR, ("collection",)),
    "retrieval:upload": Case("POST", Role.CURATOR, ("collection",)),
    "retrieval:image_detail": Case("GET", Role.ANNOTATOR, ("collection", "image")),
    "retrieval:media": Case("GET", Role.ANNOTATOR, ("media",)),
    "retrieval:similar": Case("GET", Role.ANNOTATOR, ("collection", "image")),
    "retrieval:search": Case("GET", Role.ANNOTATOR, ("collection",)),
    "retrieval:duplicates": Case("GET", Role.ANNOTATOR, ("collection",)),
    "retrieval:map": Case("GET", Role.ANNOTATOR, ("collection",)),
    # Deletion: the GETs show the confirmation pages (tests/retrieval/test_deletion.py deletes)
    "retrieval:images_delete": Case("GET", Role.CURATOR, ("collection",)),
    "retrieval:collection_delete": Case("GET", Role.ADMIN, ("collection",)),
    "api:delete_images": Case("POST", Role.CURATOR, ("collection",), api=True),
    "api:collections": Case("GET", SIGNED_IN, api=True),
    "api:collection": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "api:collection_images": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "api:search": Case("POST", Role.ANNOTATOR, ("collection",), api=True),
    "api:export_embeddings": Case("GET", Role.CURATOR, ("collection",), api=True),
    "api:export_model": Case("GET", Role.CURATOR, ("collection",), api=True),
    "api:image": Case("GET", Role.ANNOTATOR, ("collection", "image"), api=True),
    # Training, versions, jobs (worker)
    "worker:status": Case("GET", SIGNED_IN),
    "worker:models": Case("GET", Role.ANNOTATOR, ("collection",)),
    "worker:train": Case("POST", Role.ADMIN, ("collection",)),
    "worker:training_policy": Case("POST", Role.ADMIN, ("collection",)),
    "worker:job_list": Case("GET", SIGNED_IN),
    "worker:job_detail": Case("GET", Role.ANNOTATOR, ("job",)),
    "worker:job_cancel": Case("POST", Role.ADMIN, ("job",)),
    "worker:version_activate": Case("POST", Role.ADMIN, ("version",)),
    "worker:version_delete_embeddings": Case("POST", Role.ADMIN, ("version",)),
    "worker_api:train": Case("POST", Role.ADMIN, ("collection",), api=True),
    "worker_api:models": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "worker_api:job": Case("GET", Role.ANNOTATOR, ("job",), api=True),
    "worker_api:job_cancel": Case("POST", Role.ADMIN, ("job",), api=True),
    "worker_api:activate": Case("POST", Role.ADMIN, ("version",), api=True),
    # Pair labeling (labeling)
    "labeling:label": Case("GET", Role.ANNOTATOR, ("collection",)),
    "labeling:groups": Case("GET", Role.ANNOTATOR, ("collection",)),
    "labeling:mark": Case("POST", Role.ANNOTATOR, ("collection",)),
    "labeling:instructions": Case("GET", Role.ADMIN, ("collection",)),
    "labeling_api:next_pair": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "labeling_api:counters": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "labeling_api:mark": Case("POST", Role.ANNOTATOR, ("collection",), api=True),
    "labeling_api:export": Case("GET", Role.CURATOR, ("collection",), api=True),
    "labeling_api:import": Case("POST", Role.CURATOR, ("collection",), api=True),
    "labeling_api:export_groups": Case("GET", Role.CURATOR, ("collection",), api=True),
    # Reading is for every member; changing them (PATCH) needs the admin role: see
    # tests/labeling/test_instructions.py.
    "labeling_api:instructions": Case("GET", Role.ANNOTATOR, ("collection",), api=True),
    "labeling_api:export_groups_dataset": Case("GET", Role.CURATOR, ("collection",), api=True),
    "labeling_api:answer": Case("POST", Role.ANNOTATOR, ("pair",), api=True),
    "labeling_api:undo": Case("POST", Role.ANNOTATOR, ("pair",), api=True),
    "labeling_api:adjudicate": Case("POST", Role.CURATOR, ("pair",), api=True),
    # Audit log (audit)
    "retrieval:activity": Case("GET", Role.ADMIN, ("collection",)),
}


def _url_names(patterns: list[Any], namespace: str = "") -> Iterator[str]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                continue  # Django's admin checks is_staff itself
            inner = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
            yield from _url_names(pattern.url_patterns, (inner or namespace).strip(":"))
        elif isinstance(pattern, URLPattern):
            yield f"{namespace}:{pattern.name}" if namespace else str(pattern.name)


def test_every_url_has_a_permission_case() -> None:
    names = set(_url_names(get_resolver().url_patterns))
    assert names - set(CASES) == set(), (
        "URLs without a permission case in tests/test_permissions.py"
    )
    assert set(CASES) - names == set(), "cases for URLs that no longer exist"


@pytest.fixture
def objects(collection: Collection, admin, settings, tmp_path) -> dict[str, str]:
    """One of each object a URL can name, all in the cast's collection."""
    settings.MEDIA_ROOT = tmp_path / "media"
    from labeling.models import Pair
    from retrieval.imports import Limits, from_uploads, import_items
    from worker.models import Job

    files = []
    for shade in (10, 200):
        data = io.BytesIO()
        PILImage.new("RGB", (24, 24), (shade, shade, shade)).save(data, format="PNG")
        data.name = f"{shade}.png"
        data.seek(0)
        files.append(data)
    limits = Limits.from_settings()
    report = import_items(collection, from_uploads(files, limits), limits)
    first, second = sorted(report.created)
    image = Image.objects.get(pk=first)
    version = ModelVersion.objects.create(
        collection=collection, number=1, kind=ModelVersion.Kind.UNTRAINED,
        status=ModelVersion.Status.READY,
    )  # fmt: skip
    job = Job.objects.create(kind=Job.Kind.TRAIN, collection=collection, requested_by=admin)
    pair = Pair.objects.create(collection=collection, a_id=first, b_id=second)
    return {
        "collection": str(collection.pk),
        "image": str(image.pk),
        "media": str(image.file.name),
        "version": str(version.pk),
        "job": str(job.pk),
        "pair": str(pair.pk),
    }


ROLES = ["anonymous", "outsider", "annotator", "curator", "admin"]
RANK = {"annotator": Role.ANNOTATOR, "curator": Role.CURATOR, "admin": Role.ADMIN}


def _verdict(case: Case, who: str, status: int, location: str) -> str | None:
    """None when `status` is what `who` should get from this URL, else what went wrong."""
    if status >= 500 and not (case.may_be_unavailable and status == 503):
        return f"server error {status}"
    if case.needs == PUBLIC:
        return None
    if who == "anonymous":
        if case.api:
            return None if status in (401, 403) else f"anonymous got {status}, not 401/403"
        if status == 302 and "/accounts/login/" in location:
            return None
        return f"anonymous got {status}, not a redirect to the login page"
    if case.needs == SIGNED_IN:
        allowed = True
    elif who == "outsider":
        return None if status == 404 else f"an outsider got {status}: it must be 404"
    else:
        assert isinstance(case.needs, int)
        allowed = RANK[who] >= case.needs
    if allowed:
        return None if status not in (401, 403, 404) else f"refused with {status}"
    return None if status == 403 else f"got {status}, not 403 (needs role {case.needs})"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CASES))
def test_url_answers_each_role_as_its_permissions_say(
    name: str, objects: dict[str, str], request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    url = reverse(name, args=[objects[arg] for arg in case.args])
    problems = []
    for who in ROLES:
        client = Client()
        if who != "anonymous":
            client.force_login(request.getfixturevalue(who))
        response = client.generic(case.method, url)
        problem = _verdict(case, who, response.status_code, response.get("Location", ""))
        if problem:
            problems.append(f"{case.method} {url} as {who}: {problem}")
    assert problems == []
