"""What the training jobs (worker/) read from labeling: the constraints to learn from and how
many answers arrived since the last run."""

from __future__ import annotations

from datetime import datetime

from labeling.inference import infer
from labeling.models import ConstraintRevision
from retrieval.models import Collection


def known_constraints(
    collection: Collection | int,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(must-link, cannot-link) image-id pairs (a < b) from resolved human and imported answers.

    Unsure answers and flagged (contradicting, not yet adjudicated) pairs are left out; a
    curator's ruling replaces the majority. Only pairs somebody answered or imported: implied
    pairs follow from these and the loss sees them through the groups' shared embeddings.
    """
    inference = infer(collection)
    must = sorted({(p.a, p.b) for p in inference.must_pairs})
    cannot = sorted({(p.a, p.b) for p in inference.cannot_pairs})
    return must, cannot


def answers_since(collection: Collection | int, when: datetime | None) -> int:
    """Answers stored (human or imported, undos not counted) after `when`; all if None."""
    revisions = ConstraintRevision.objects.filter(pair__collection=collection).exclude(answer="")
    if when is not None:
        revisions = revisions.filter(created_at__gt=when)
    return revisions.count()
