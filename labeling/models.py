"""Pair constraints: who answered what about which two images, and the pair queue.

A `Pair` is an unordered image pair of one collection, stored normalized (a < b) so the two
orders are one row. It is both the queue entry (strategy, lease) and the place where the
resolved view lives (majority answer, agreement, contradiction flag, adjudication). A
`Constraint` is one source's answer about a pair: one per annotator (a new answer replaces the
old one, `ConstraintRevision` keeps every answer ever given), or one imported answer.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator
from django.db import models

from retrieval.models import Collection, Image, ModelVersion


class Answer(models.TextChoices):
    SAME = "same"
    DIFFERENT = "different"
    UNSURE = "unsure"


class Source(models.TextChoices):
    HUMAN = "human"
    IMPORTED = "imported"
    # Implied by union-find; counted on the fly (never stored: a group of n implies n(n-1)/2
    # pairs) and written out only by exports that ask for them.
    INFERRED = "inferred"


class Strategy(models.TextChoices):
    UNCERTAIN = "uncertain"
    DISAGREEMENT = "disagreement"
    DIVERSE = "diverse"
    MERGE_GAIN = "merge-gain"
    RANDOM = "random"
    # A pair that entered through an answer or an import, never through mining.
    NONE = ""


DEFAULT_MIX: dict[str, float] = {
    Strategy.MERGE_GAIN: 1.0,
    Strategy.UNCERTAIN: 0.0,
    Strategy.RANDOM: 0.0,
    Strategy.DIVERSE: 0.0,
    Strategy.DISAGREEMENT: 0.0,
}


def default_mix() -> dict[str, float]:
    return {str(k): v for k, v in DEFAULT_MIX.items()}


def validate_mix(mix: object) -> None:
    """A strategy mix: strategy name -> weight >= 0, at least one weight above 0."""
    names = [str(s) for s in Strategy if s]
    if not isinstance(mix, dict) or not mix:
        raise ValidationError(f"the mix maps strategy names ({', '.join(names)}) to weights")
    unknown = sorted(str(k) for k in mix if k not in names)
    if unknown:
        raise ValidationError(
            f"unknown strategies {', '.join(unknown)}; choose from {', '.join(names)}"
        )
    for name, weight in mix.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValidationError(f"the weight of {name} must be a number >= 0, not {weight!r}")
    if not any(weight > 0 for weight in mix.values()):
        raise ValidationError("at least one strategy needs a weight above 0")


DEFAULT_QUESTION = "Same or different?"
QUESTION_MAX = 200
INSTRUCTIONS_MAX = 10_000
# Enough to show the boundary cases; more would bury the pair being labelled.
EXAMPLES_MAX = 12


class LabelingSettings(models.Model):
    """Per-collection knobs of the labeling loop; created on first use with the defaults."""

    collection = models.OneToOneField(
        Collection, on_delete=models.CASCADE, related_name="labeling_settings"
    )
    # Strategy name -> weight; the weights need not sum to 1.
    strategy_mix = models.JSONField(default=default_mix, validators=[validate_mix])
    lease_seconds = models.PositiveIntegerField(default=300)
    batch_size = models.PositiveIntegerField(default=200)
    # When the queue holds fewer unanswered pairs than this, a mining task is queued.
    low_water = models.PositiveIntegerField(default=50)
    # Claimed by a conditional UPDATE so at most one mining task is queued per collection.
    mining_requested_at = models.DateTimeField(null=True, blank=True)
    # Kept by every change to the answers (labeling.answers.refresh_flags), so the counters an
    # annotator sees after each answer cost no replay of the whole collection.
    implied_pairs = models.PositiveBigIntegerField(default=0)
    flagged_pairs = models.PositiveIntegerField(default=0)
    # Changes whenever an answer change is more than one pair appended to the replay order: a
    # process whose kept replay (labeling.inference.refresh) has another epoch replays anew.
    inference_epoch = models.CharField(max_length=32, blank=True)
    # The version the queue was last mined from: a newly activated version triggers mining.
    mined_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What "same" means in this collection: the Label page's heading, and Markdown shown above the
    # pair (labeling.instructions renders it without raw HTML) with the pinned ExamplePairs.
    question = models.CharField(max_length=QUESTION_MAX, default=DEFAULT_QUESTION)
    instructions = models.TextField(blank=True, validators=[MaxLengthValidator(INSTRUCTIONS_MAX)])
    # When the question, the instructions or the examples last changed: the Label page opens the
    # instructions again for annotators who saw an older version.
    instructions_changed_at = models.DateTimeField(null=True, blank=True)


class ExamplePair(models.Model):
    """A pair an admin pinned as an example of "same" or "different" for the Label page; only an
    illustration, never an answer (inference and training do not see it)."""

    class Kind(models.TextChoices):
        SAME = Answer.SAME.value
        DIFFERENT = Answer.DIFFERENT.value

    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="example_pairs"
    )
    a = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    b = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    answer = models.CharField(max_length=10, choices=Kind.choices)
    pinned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    pinned_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Stored like Pair (a < b): one pair cannot be pinned as both same and different.
            models.UniqueConstraint(fields=["collection", "a", "b"], name="example_unique"),
            models.CheckConstraint(
                condition=models.Q(a__lt=models.F("b")), name="example_normalized"
            ),
        ]
        ordering = ["pinned_at", "id"]

    def __str__(self) -> str:
        return f"example {self.a_id}-{self.b_id}: {self.answer}"


class Pair(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        ANSWERED = "answered"
        # Implied by other answers before anybody got to it: never shown.
        RETIRED = "retired"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="pairs")
    a = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    b = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    strategy = models.CharField(max_length=16, choices=Strategy.choices, blank=True)
    # The version whose embeddings proposed it; null for answered-first and imported pairs.
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    score = models.FloatField(default=0.0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    leased_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Resolved view, recomputed from the constraints whenever one of them changes.
    resolved = models.CharField(max_length=10, choices=Answer.choices, blank=True)
    agreement = models.FloatField(null=True, blank=True)
    answer_count = models.PositiveIntegerField(default=0)
    # Contradicts what the other answers imply: kept out of inference and training until a
    # curator adjudicates.
    flagged = models.BooleanField(default=False)
    # Not a column: the proposing version's number, read with the lease (pair_queue._claim) so
    # the Label page can say which model chose the pair.
    version_number: int | None = None
    adjudicated = models.CharField(max_length=10, choices=Answer.choices, blank=True)
    adjudicated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When the resolved answer last changed: contradictions are judged in this order (a newer
    # answer that disagrees with what older ones imply is the one flagged).
    answered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "a", "b"], name="pair_unique"),
            models.CheckConstraint(condition=models.Q(a__lt=models.F("b")), name="pair_normalized"),
        ]
        indexes = [
            # The queue: the next queued pair of a collection in mining order.
            models.Index(
                fields=["collection", "id"],
                name="pair_queue",
                condition=models.Q(status="queued"),
            ),
            models.Index(
                fields=["collection"], name="pair_flagged", condition=models.Q(flagged=True)
            ),
        ]

    def __str__(self) -> str:
        return f"pair {self.a_id}-{self.b_id}"

    @property
    def final_answer(self) -> str:
        """What inference and training use: the curator's ruling, else the majority."""
        return self.adjudicated or self.resolved


class Constraint(models.Model):
    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="constraints")
    answer = models.CharField(max_length=10, choices=Answer.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.HUMAN)
    # Null for imported answers whose annotator has no account here; `annotator_name` keeps the
    # name an export wrote.
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    annotator_name = models.CharField(max_length=150, blank=True)
    idempotency_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["pair", "annotator"],
                name="constraint_one_per_annotator",
                condition=models.Q(annotator__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["pair", "annotator_name"],
                name="constraint_one_per_imported_name",
                condition=models.Q(annotator__isnull=True),
            ),
        ]


class ConstraintRevision(models.Model):
    """Every answer ever stored, and every undo (answer blank): the history behind Constraint."""

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="revisions")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    answer = models.CharField(max_length=10, choices=Answer.choices, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.HUMAN)
    idempotency_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # The idempotency guarantee: a retried request finds its own revision and stops.
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"],
                name="revision_idempotent",
                condition=~models.Q(idempotency_key=""),
            )
        ]


class Group(models.Model):
    """A name a curator gave a must-link group, pinned to one member image (groups merge and
    split as answers change; the name follows the image)."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="groups")
    anchor = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    named_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    named_at = models.DateTimeField(auto_now=True)
