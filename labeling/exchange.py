"""Constraints and groups in and out: CSV and JSONL exports, the groups as an image-folder data
set (zip), and imports that store nothing when any line is wrong (every error names its line)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from django.contrib.auth.models import User
from django.core.files import File
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from audit.models import Event
from labeling.answers import normalize, refresh_flags, resolve_pair
from labeling.inference import infer
from labeling.locks import lock_collection
from labeling.models import Answer, Constraint, ConstraintRevision, Group, Pair, Source
from retrieval.exports import (
    CHUNK,
    FORMULA_STARTS,
    Entry,
    collection_slug,
    csv_chunks,
    file_name,
    safe_cell,
    zip_stream,
)
from retrieval.models import Collection, Image

FIELDS = ["a_id", "b_id", "a_name", "b_name", "answer", "annotator", "time", "source"]
GROUP_FIELDS = ["group", "name", "image_id", "original_name"]
DATASET_FIELDS = ["group", "name", "folder", "file", "image_id", "original_name"]
UNGROUPED_FIELDS = ["image_id", "original_name", "label"]
# Images whose rows are fetched at once while the data set streams (their files one at a time).
DATASET_BATCH = 500
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


def _uncell(value: str) -> str:
    """What retrieval.exports.safe_cell wrote for a spreadsheet, read back."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def _safe(row: dict[str, str | int]) -> dict[str, str | int]:
    return {key: safe_cell(value) for key, value in row.items()}


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


def dataset_name(collection: Collection) -> str:
    return f"{collection_slug(collection)}-groups"


def group_folder(number: int, name: str, width: int) -> str:
    """`0007`, or `0007-sneakers` when the curator named the group: numbered as in the groups
    CSV, zero-padded so that sorting the folders (as ImageFolder does) keeps that order."""
    label = slugify(name, allow_unicode=True)
    return f"{number:0{width}d}-{label}" if label else f"{number:0{width}d}"


def export_groups_dataset(collection: Collection) -> Iterator[bytes]:
    """The must-link groups as a labelled image data set: a zip holding one folder NAME/ with one
    class folder per group, the class-folder layout torchvision's ImageFolder and
    `python -m retrieval.autoret --data FOLDER` read as labels.

    - NAME/<group folder>/<image id>-<original name>.<format>: each grouped image's stored file,
      byte for byte (the id keeps two images of the same name apart);
    - NAME/groups.csv: group, name, folder, file, image_id, original_name (`file` is empty for an
      image whose stored file cannot be read: it is left out of its folder);
    - NAME/ungrouped.csv: image_id, original_name, label of every image in no group, listed and
      not copied: a class folder of them would tell a trainer they are all alike.

    Images are read one at a time as the zip streams; only ids and names stay in memory."""
    rows = group_rows(collection)
    width = max(4, len(str(rows[-1]["group"]))) if rows else 4
    root = dataset_name(collection)

    def entries() -> Iterator[Entry]:
        placed: list[dict[str, str | int]] = []
        for start in range(0, len(rows), DATASET_BATCH):
            batch = rows[start : start + DATASET_BATCH]
            images = Image.objects.in_bulk([row["image_id"] for row in batch])
            for row in batch:
                folder = group_folder(int(row["group"]), str(row["name"]), width)
                image = images.get(int(row["image_id"]))
                handle = _open(image)
                if image is None or handle is None:
                    placed.append({**row, "folder": folder, "file": ""})
                    continue
                stem = PurePosixPath(file_name(image.original_name, "")).stem
                suffix = PurePosixPath(image.file.name or "").suffix
                file = f"{image.pk}-{stem}{suffix}" if stem else f"{image.pk}{suffix}"
                placed.append({**row, "folder": folder, "file": f"{folder}/{file}"})
                yield Entry(f"{root}/{folder}/{file}", _read(handle), compress=False)
        yield Entry(
            f"{root}/groups.csv",
            csv_chunks(DATASET_FIELDS, ([row[f] for f in DATASET_FIELDS] for row in placed)),
        )
        grouped = {int(row["image_id"]) for row in rows}
        everything = (
            Image.objects.filter(collection=collection)
            .order_by("pk")
            .values_list("pk", "original_name", "label")
        )
        alone = (r for r in everything.iterator(chunk_size=2000) if r[0] not in grouped)
        yield Entry(f"{root}/ungrouped.csv", csv_chunks(UNGROUPED_FIELDS, alone))

    return zip_stream(entries())


def _open(image: Image | None) -> File | None:
    """The image's stored file, open; None when it is gone (deleted meanwhile, lost on disk)."""
    if image is None:
        return None
    try:
        return image.file.open("rb")
    except OSError:
        return None


def _read(handle: File) -> Iterator[bytes]:
    with handle:
        yield from handle.chunks(CHUNK)


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
