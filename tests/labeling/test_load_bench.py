"""bench/labeling_load.py's annotators against a live server, briefly: every acknowledged answer
is stored exactly once and no pair is answered by two annotators."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from retrieval.models import Membership
from tests.labeling.conftest import add_images, add_version

BENCH = Path(__file__).resolve().parents[2] / "bench" / "labeling_load.py"


@pytest.mark.integration  # a live web server and four annotator threads
@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_lose_and_duplicate_nothing(
    live_server, collection, django_user_model
):
    spec = importlib.util.spec_from_file_location("labeling_load", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module body runs.
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    images = add_images(collection, 30)
    add_version(collection, images, number=1, seed=5)
    annotators = []
    for i in range(4):
        user = django_user_model.objects.create_user(f"bench-annotator-{i}")
        Membership.objects.create(collection=collection, user=user, role=Membership.Role.ANNOTATOR)
        annotators.append(bench.Annotator(user.username, Token.objects.create(user=user).key))
    deadline = time.monotonic() + 3
    threads = [
        threading.Thread(
            target=bench.run_annotator, args=(live_server.url, collection.pk, a, deadline, i)
        )
        for i, a in enumerate(annotators)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(a.acknowledged) for a in annotators) > 0
    assert sum(a.errors for a in annotators) == 0
    assert bench.audit(annotators, collection.pk) == (0, 0, 0)
