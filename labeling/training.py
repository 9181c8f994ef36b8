"""What the training jobs (worker/) read from labeling: the constraints to learn from, those
kept out of training to measure versions on, and how many answers arrived since the last run."""

from __future__ import annotations

import hashlib
from datetime import datetime

from labeling.inference import infer
from labeling.models import ConstraintRevision
from retrieval.models import Collection

Pairs = list[tuple[int, int]]


def is_held_out(a: int, b: int, percent: int) -> bool:
    """Whether the pair (a, b), a < b, is kept out of training when `percent` % are: a fixed
    hash of the two image ids, so every version leaves out the same pairs, a pair answered later
    is as likely to be held out as any, and raising the percent only adds pairs."""
    if percent <= 0:
        return False
    digest = hashlib.blake2b(f"{a}:{b}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < percent


def known_constraints(
    collection: Collection | int, held_out_percent: int = 0
) -> tuple[Pairs, Pairs]:
    """(must-link, cannot-link) image-id pairs (a < b) from resolved human and imported answers,
    less those `held_out_percent` keeps for measuring (`split_constraints`).

    Unsure answers and flagged (contradicting, not yet adjudicated) pairs are left out; a
    curator's ruling replaces the majority. Only pairs somebody answered or imported: implied
    pairs follow from these and the loss sees them through the groups' shared embeddings.
    """
    return split_constraints(collection, held_out_percent)[0]


def held_out_constraints(collection: Collection | int, percent: int) -> tuple[Pairs, Pairs]:
    """The (must-link, cannot-link) pairs that training at `percent` leaves out."""
    return split_constraints(collection, percent)[1]


def split_constraints(
    collection: Collection | int, percent: int
) -> tuple[tuple[Pairs, Pairs], tuple[Pairs, Pairs]]:
    """((must, cannot) to train on, (must, cannot) held out at `percent`), from one replay of
    the answers."""
    inference = infer(collection)
    must = sorted({(p.a, p.b) for p in inference.must_pairs})
    cannot = sorted({(p.a, p.b) for p in inference.cannot_pairs})

    def side(pairs: Pairs, held: bool) -> Pairs:
        return [p for p in pairs if is_held_out(*p, percent) == held]

    return (side(must, False), side(cannot, False)), (side(must, True), side(cannot, True))


def answers_since(collection: Collection | int, when: datetime | None) -> int:
    """Answers stored (human or imported, undos not counted) after `when`; all if None."""
    revisions = ConstraintRevision.objects.filter(pair__collection=collection).exclude(answer="")
    if when is not None:
        revisions = revisions.filter(created_at__gt=when)
    return revisions.count()
