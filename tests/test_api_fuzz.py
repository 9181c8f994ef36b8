"""Schemathesis against /api/schema/ on a running server: every operation, with a bounded number
of generated requests each (data that fits the schema and data that does not), signed in by API
token as the admin of a collection that has images, a pair, a job and a model version, so that
about half the requests for an id hit a real object. No answer may be a server error (5xx), and
every answer with a documented status must match its documented schema."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 15
# The whole run stops generating after this and fails (it takes about a minute on two cores).
BUDGET_SECONDS = 240
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def real_ids(collection, curator, settings, tmp_path) -> dict[str, int]:
    """One object of each kind an API path can name, in a collection the curator administers."""
    from labeling.models import Pair
    from retrieval.imports import from_uploads, import_items
    from retrieval.models import Membership, ModelVersion
    from worker.models import Job

    settings.MEDIA_ROOT = tmp_path / "media"
    Membership.objects.filter(user=curator).update(role=Membership.Role.ADMIN)
    files = []
    for shade in (10, 120, 240):
        data = io.BytesIO()
        PILImage.new("RGB", (24, 24), (shade, 50, 50)).save(data, format="PNG")
        data.name = f"{shade}.png"
        data.seek(0)
        files.append(data)
    first, second, _ = sorted(import_items(collection, from_uploads(files, _limits())).created)
    # Not ready: activating it is refused (a ready one would make every search load PyTorch).
    version = ModelVersion.objects.create(
        collection=collection, number=1, kind=ModelVersion.Kind.UNTRAINED,
        status=ModelVersion.Status.FAILED,
    )  # fmt: skip
    job = Job.objects.create(kind=Job.Kind.EMBED, collection=collection, requested_by=curator)
    pair = Pair.objects.create(collection=collection, a_id=first, b_id=second)
    return {
        "/api/v1/collections/": collection.pk,
        "/api/v1/jobs/": job.pk,
        "/api/v1/models/": version.pk,
        "/api/v1/pairs/": pair.pk,
    }


def _describe(error: BaseException) -> str:
    """The failure and everything inside it (Hypothesis and schemathesis group their errors)."""
    text = f"{type(error).__name__}: {error}"
    for inner in getattr(error, "exceptions", ()):
        text += "\n  " + _describe(inner).replace("\n", "\n  ")
    return text


def _limits() -> Any:
    from retrieval.imports import Limits

    return Limits.from_settings()


def test_no_api_operation_answers_with_a_server_error(
    live_server, live_redis, curator, real_ids: dict[str, int]
) -> None:
    headers = {"Authorization": f"Token {Token.objects.create(user=curator).key}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/")
    deadline = time.monotonic() + BUDGET_SECONDS
    failures: list[str] = []
    tried = 0
    calls = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"an operation the fuzzer cannot read: {result.err()}")
            continue
        operation = result.ok()
        real = {
            name: real_ids[prefix]
            for prefix in real_ids
            if operation.path.startswith(prefix)
            for name in (p.name for p in operation.path_parameters)
        }
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        strategies = [operation.as_strategy(mode) for mode in modes]
        if real:
            strategies += [operation.as_strategy(mode, path_parameters=real) for mode in modes]
        strategy = st.one_of(strategies)

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            if time.monotonic() > deadline:
                return
            nonlocal calls
            calls += 1
            response = case.call(base_url=live_server.url, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS)

        try:
            call()
        except (Exception, BaseExceptionGroup) as error:
            # A failed check: note it and go on with the next operation.
            failures.append(f"{operation.label}: {_describe(error)}")
        tried += 1
    assert tried >= 19, "the schema lost operations"
    assert calls >= 10 * tried, f"only {calls} requests for {tried} operations"
    assert time.monotonic() < deadline, "the run hit its time budget: fewer examples were tried"
    assert failures == []
