"""What "same" means in a collection: the question, the Markdown instructions and the example pairs
an admin pins, as the Label page shows them and as the settings page and the API change them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore

from labeling import strategies
from labeling.models import EXAMPLES_MAX, ExamplePair, LabelingSettings
from retrieval.models import Collection, Image

LINK_SCHEMES = ("", "http", "https", "mailto")
TEXT = ("question", "instructions")


def _safe_link(url: str) -> bool:
    # markdown-it already refuses javascript:, vbscript:, file: and most data:; a short allow list
    # also keeps out schemes nobody thought of.
    return urlsplit(url.strip()).scheme.lower() in LINK_SCHEMES


def _fit_into_the_page(state: StateCore) -> None:
    """Headings start at h3 (the page has its h1 and the panel's summary); links open a new tab, so
    following one never leaves the pair being labelled."""
    for token in state.tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 2, 6)}"
        for child in token.children or []:
            if child.type == "link_open":
                child.attrSet("target", "_blank")
                child.attrSet("rel", "noopener noreferrer")


# CommonMark with raw HTML off (it is shown as text), so an admin's Markdown cannot inject script,
# style or event handlers. Images are off too: the examples are the pictures, and an image from
# another site would tell that site who is labelling.
_markdown = MarkdownIt("commonmark", {"html": False}).disable("image")
_markdown.validateLink = _safe_link  # type: ignore[method-assign]
_markdown.core.ruler.push("fit_into_the_page", _fit_into_the_page)


def render(text: str) -> SafeString:
    # Safe to mark: raw HTML is off and every link passed _safe_link.
    return mark_safe(_markdown.render(text))


@dataclass(frozen=True)
class Example:
    a: int
    b: int
    answer: str


def check_examples(collection: Collection, examples: Iterable[Example]) -> list[Example]:
    """The examples in the stored order (a < b), or ValidationError saying what is wrong with them:
    each is two different images of `collection`, no pair twice, at most EXAMPLES_MAX."""
    chosen = list(examples)
    if len(chosen) > EXAMPLES_MAX:
        raise ValidationError(f"Pin at most {EXAMPLES_MAX} example pairs: unpin one first.")
    ids = {i for e in chosen for i in (e.a, e.b)}
    found = set(
        Image.objects.filter(collection=collection, pk__in=ids).values_list("pk", flat=True)
    )
    normalized: list[Example] = []
    for e in chosen:
        if e.answer not in ExamplePair.Kind.values:
            raise ValidationError(f"An example is same or different, not {e.answer!r}.")
        if e.a == e.b:
            raise ValidationError(f"An example needs two different images, not image {e.a} twice.")
        missing = sorted({e.a, e.b} - found)
        if missing:
            raise ValidationError(
                f"Image {missing[0]} is not in {collection.name}: examples come from its images."
            )
        pair = Example(min(e.a, e.b), max(e.a, e.b), e.answer)
        if any((n.a, n.b) == (pair.a, pair.b) for n in normalized):
            raise ValidationError(f"Images {pair.a} and {pair.b} are already an example pair.")
        normalized.append(pair)
    return normalized


def examples_of(collection: Collection) -> list[ExamplePair]:
    return list(ExamplePair.objects.filter(collection=collection).select_related("a", "b"))


def _changed(labeling: LabelingSettings) -> None:
    labeling.instructions_changed_at = timezone.now()


def _locked(collection: Collection) -> LabelingSettings:
    """The settings row, locked to the end of the transaction: two admins changing the examples
    at once take turns, so neither passes EXAMPLES_MAX nor pins a pair the other just pinned."""
    strategies.settings_for(collection)  # created first: a missing row cannot be locked
    return LabelingSettings.objects.select_for_update().get(collection=collection)


@transaction.atomic
def update(
    collection: Collection,
    by: User | None,
    *,
    question: str | None = None,
    instructions: str | None = None,
    examples: list[Example] | None = None,
) -> LabelingSettings:
    """Set what is given (None: unchanged); `examples` replaces the pinned list, pinned by `by`
    (None: by the platform, e.g. the demo). Validates the text fields as the model does and the
    examples with check_examples. Only a real change reopens the instructions for annotators."""
    labeling = _locked(collection)
    before = (labeling.question, labeling.instructions)
    if question is not None:
        labeling.question = question
    if instructions is not None:
        labeling.instructions = instructions
    labeling.clean_fields(
        exclude=[f.name for f in LabelingSettings._meta.fields if f.name not in TEXT]
    )
    changed = (labeling.question, labeling.instructions) != before
    if examples is not None:
        wanted = {(e.a, e.b): e.answer for e in check_examples(collection, examples)}
        # Pairs pinned before with the same answer stay, with who pinned them and when.
        pinned = {(p.a_id, p.b_id): p for p in ExamplePair.objects.filter(collection=collection)}
        gone = [p.pk for key, p in pinned.items() if wanted.get(key) != p.answer]
        new = [
            ExamplePair(collection=collection, a_id=a, b_id=b, answer=answer, pinned_by=by)
            for (a, b), answer in wanted.items()
            if (a, b) not in pinned or pinned[(a, b)].answer != answer
        ]
        ExamplePair.objects.filter(pk__in=gone).delete()
        ExamplePair.objects.bulk_create(new)
        changed = changed or bool(gone or new)
    if changed:
        _changed(labeling)
        labeling.save(update_fields=["question", "instructions", "instructions_changed_at"])
    return labeling


@transaction.atomic
def pin(collection: Collection, by: User, example: Example) -> ExamplePair:
    """Add one example pair to those pinned (ValidationError when check_examples refuses it)."""
    labeling = _locked(collection)
    pinned = [
        Example(p.a_id, p.b_id, p.answer) for p in ExamplePair.objects.filter(collection=collection)
    ]
    checked = check_examples(collection, [*pinned, example])[-1]
    stored = ExamplePair.objects.create(
        collection=collection, a_id=checked.a, b_id=checked.b, answer=checked.answer, pinned_by=by
    )
    _changed(labeling)
    labeling.save(update_fields=["instructions_changed_at"])
    return stored


@transaction.atomic
def unpin(collection: Collection, example_id: int) -> bool:
    labeling = _locked(collection)
    deleted, _ = ExamplePair.objects.filter(collection=collection, pk=example_id).delete()
    if deleted:
        _changed(labeling)
        labeling.save(update_fields=["instructions_changed_at"])
    return bool(deleted)
