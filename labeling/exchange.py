"""Constraints and groups in and out: CSV and JSONL exports, and imports that store nothing when
any line is wrong (every error names its line)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audit.models import Event
from labeling.answers import normalize, refresh_flags, resolve_pair
from labeling.inference import infer
from labeling.locks import lock_collection
from labeling.models import Answer, Constraint, ConstraintRevision, Group, Pair, Source
from retrieval.models import Collection, Image

FIELDS = ["a_id", "b_id", "a_name", "b_name", "answer", "annotator", "time", "source"]
GROUP_FIELDS = ["group", "name", "image_id", "original_name"]
MAX_ERRORS = 50
ANNOTATOR_MAX = Constraint._meta.get_field("annotator_name").max_length or 150


def constraint_rows(collection: Collection) -> Iterator[dict[str, str | int]]:
    constraints = (
        Constraint.objects.filter(pair__collection=collection)
        .select_related("pair__a", "pair__b", "annotator")
        .order_by("pair_id", "id")
    )
    for c in constraints.iterator(chunk_size=2000):
        yield {
            "a_id": c.pair.a_id,
            "b_id": c.pair.b_id,
            "a_name": c.pair.a.original_name,
            "b_name": c.pair.b.original_name,
            "answer": c.answer,
            "annotator": c.annotator.get_username() if c.annotator else c.annotator_name,
            "time": c.created_at.isoformat(),
            "source": c.source,
        }


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | int) -> str | int:
    """A CSV cell a spreadsheet shows as text: a leading quote before a formula start, which
    `_uncell` takes off again when the file is imported."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _uncell(value: str) -> str:
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def _safe(row: dict[str, str | int]) -> dict[str, str | int]:
    return {key: _cell(value) for key, value in row.items()}


def export_csv(collection: Collection) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    for row in constraint_rows(collection):
        writer.writerow(_safe(row))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def export_jsonl(collection: Collection) -> Iterator[str]:
    for row in constraint_rows(collection):
        yield json.dumps(row) + "\n"


def group_rows(collection: Collection) -> list[dict[str, str | int]]:
    """One row per image in a must-link group of two or more; `name` is the curator's label."""
    groups = infer(collection).groups()
    names = dict(Group.objects.filter(collection=collection).values_list("anchor_id", "name"))
    images = dict(
        Image.objects.filter(pk__in=[i for m in groups.values() for i in m]).values_list(
            "pk", "original_name"
        )
    )
    rows: list[dict[str, str | int]] = []
    for number, members in enumerate(sorted(groups.values(), key=lambda m: (-len(m), m[0])), 1):
        name = next((names[i] for i in members if i in names), "")
        for image_id in members:
            rows.append(
                {
                    "group": number,
                    "name": name,
                    "image_id": image_id,
                    "original_name": images.get(image_id, ""),
                }
            )
    return rows


def export_groups_csv(collection: Collection) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GROUP_FIELDS)
    writer.writeheader()
    writer.writerows(_safe(row) for row in group_rows(collection))
    return buffer.getvalue()


class ImportFailed(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Row:
    line: int
    a: int
    b: int
    answer: str
    annotator: str
    time: datetime


def _records(text: str, fmt: str) -> Iterator[tuple[int, dict[str, object] | str]]:
    """(line number, record or error message) for every non-blank line of the file."""
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, f"not JSON ({error.msg})"
                continue
            yield number, record if isinstance(record, dict) else "not a JSON object"
        return
    reader = csv.DictReader(io.StringIO(text))
    missing = {"answer"} - set(reader.fieldnames or [])
    if missing:
        yield 1, "the header needs an answer column and a_id/b_id or a_name/b_name"
        return
    for record in reader:
        yield (
            reader.line_num,
            {k: _uncell(v) if isinstance(v, str) else v for k, v in record.items()},
        )


def _image(
    record: dict[str, object], side: str, ids: set[int], names: dict[str, int | None]
) -> int | str:
    raw = record.get(f"{side}_id")
    if raw not in (None, ""):
        try:
            image_id = int(str(raw))
        except ValueError:
            return f"{side}_id {raw!r} is not a number"
        if image_id in ids:
            return image_id
    name = str(record.get(f"{side}_name") or "")
    if name:
        found = names.get(name, 0)
        if found is None:
            return f"{side}_name {name!r} names several images of this collection"
        if found:
            return found
    return f"image {side} ({raw or name!r}) is not in this collection"


def _aware_time(text: str) -> datetime | None:
    """The time in UTC, or None when it is not one: parse_datetime returns None for a malformed
    string and raises ValueError for a well-formed impossible one (month 13, offset +99:00); a
    time that leaves the calendar once in UTC (year 1 with a positive offset) overflows."""
    try:
        parsed = parse_datetime(text)
        if parsed is None:
            return None
        aware = parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)
        return aware.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def parse(collection: Collection, text: str, fmt: str) -> list[Row]:
    """Validated rows, or ImportFailed with every error ("line N: ...", at most MAX_ERRORS)."""
    ids = set(Image.objects.filter(collection=collection).values_list("pk", flat=True))
    names: dict[str, int | None] = {}
    for pk, name in Image.objects.filter(collection=collection).values_list("pk", "original_name"):
        # None marks a name two images share: it cannot identify either.
        names[name] = None if name in names else pk
    rows: list[Row] = []
    errors: list[str] = []
    for line, record in _records(text, fmt):
        if len(errors) >= MAX_ERRORS:
            break
        if isinstance(record, str):
            errors.append(f"line {line}: {record}")
            continue
        a, b = _image(record, "a", ids, names), _image(record, "b", ids, names)
        answer = str(record.get("answer") or "")
        problems = [x for x in (a, b) if isinstance(x, str)]
        if answer not in Answer.values:
            problems.append(f"answer {answer!r} is not one of {', '.join(Answer.values)}")
        time = timezone.now()
        if record.get("time"):
            parsed = _aware_time(str(record["time"]))
            if parsed is None:
                problems.append(f"time {record['time']!r} is not an ISO 8601 date and time")
            else:
                time = parsed
        annotator = str(record.get("annotator") or "imported")
        if len(annotator) > ANNOTATOR_MAX:
            problems.append(f"annotator name is longer than {ANNOTATOR_MAX} characters")
        if not problems and a == b:
            problems.append("a and b are the same image")
        if problems:
            errors.append(f"line {line}: " + "; ".join(problems))
            continue
        assert isinstance(a, int) and isinstance(b, int)
        rows.append(Row(line, a, b, answer, annotator, time))
    if errors:
        raise ImportFailed(errors)
    return rows


def import_constraints(
    collection: Collection,
    text: str,
    fmt: str,
    *,
    by: User | None = None,
    via: str = "command",
) -> int:
    """Stores the file's constraints as imported answers (one per pair and annotator name, so
    importing the same file twice changes nothing, nor does reading back this collection's own
    export); all or nothing. Returns the answers stored.

    An accepted import is logged in its transaction (who, `via` api or command, the format and
    the counts); a file refused for a bad line stores nothing and logs nothing."""
    if fmt not in ("csv", "jsonl"):
        raise ImportFailed([f"unknown format {fmt!r}: csv or jsonl"])
    rows = parse(collection, text, fmt)
    accounts = {
        u.get_username(): u for u in User.objects.filter(username__in={r.annotator for r in rows})
    }
    stored = 0
    with transaction.atomic():
        lock_collection(collection.pk)
        touched: dict[int, Pair] = {}
        for row in rows:
            a, b = normalize(row.a, row.b)
            pair, _ = Pair.objects.get_or_create(
                collection=collection, a_id=a, b_id=b, defaults={"status": Pair.Status.ANSWERED}
            )
            account = accounts.get(row.annotator)
            if account and Constraint.objects.filter(pair=pair, annotator=account).exists():
                # This collection's own export read back in: the answer is already here, and a
                # second copy under the same name would count twice in the majority.
                continue
            stored += 1
            Constraint.objects.update_or_create(
                pair=pair,
                annotator=None,
                annotator_name=row.annotator,
                defaults={"answer": row.answer, "source": Source.IMPORTED, "created_at": row.time},
            )
            ConstraintRevision.objects.create(pair=pair, answer=row.answer, source=Source.IMPORTED)
            touched[pair.pk] = pair
        for pair in touched.values():
            resolve_pair(pair)
            pair.save()
        refresh_flags(collection.pk)
        Event.record(
            Event.Action.CONSTRAINTS_IMPORT, by, collection,
            via=via, format=fmt, rows=len(rows), stored=stored, pairs=len(touched),
        )  # fmt: skip
    return stored
