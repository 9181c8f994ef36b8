"""Results as files people open elsewhere: a model version's embeddings (.npy + CSV) and a trained
version's checkpoint, each a zip written while it downloads; labeling.exchange builds the groups
data set with the same writer.

Why a zip written into the response and not a temporary file: Python's zipfile writes to a stream
it cannot seek (each entry's sizes and CRC then follow its data in a data descriptor), so the
first bytes leave at once, nothing is spooled to disk, and a cancelled download stops the work.
At no point is more than one image file, one batch of vectors or one CSV chunk held in memory.
"""

from __future__ import annotations

import csv
import io
import re
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header
from django.utils.text import slugify

from retrieval import queries
from retrieval.autoret.constants import EMBED_DIM
from retrieval.models import Collection, Embedding, ModelVersion

CHUNK = 256 * 1024
VECTOR_BATCH = 2000
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Files a training job leaves in a checkpoint directory that are not the model: the frozen
# training rows (worker.pipeline.DATA_FILE, every image's pixels) and half-written temporaries.
NOT_MODEL_FILES = re.compile(r"data\.npz|.*\.tmp(\..*)?")
EMBEDDING_FIELDS = ["row", "image_id", "original_name", "label"]


class NotExportable(Exception):
    """A version that exists but has nothing to give in this form; the message says why."""


def safe_cell(value: str | int) -> str | int:
    """A CSV cell a spreadsheet shows as text: a leading quote before a formula start (the
    constraint import takes it off again)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_chunks(fields: list[str], rows: Iterable[Iterable[str | int]]) -> Iterator[bytes]:
    """UTF-8 CSV with a header, every cell made safe, in chunks of about CHUNK bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([safe_cell(value) for value in row])
        if buffer.tell() >= CHUNK:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def file_name(text: str, fallback: str = "file") -> str:
    """`text` as one harmless path component: no separators, no leading dot, word characters,
    dots and dashes only, at most 100 characters."""
    cleaned = re.sub(r"[^\w.-]+", "_", text.replace("\\", "/").rsplit("/", 1)[-1])
    return cleaned.lstrip(".")[:100] or fallback


def collection_slug(collection: Collection) -> str:
    return slugify(collection.name) or f"collection-{collection.pk}"


@dataclass(frozen=True)
class Entry:
    """One file of a zip: its path inside, its bytes as chunks (read only when written)."""

    name: str
    chunks: Iterable[bytes]
    compress: bool = True
    # The size when known: zipfile must announce zip64 before the data of an entry past 2 GiB.
    size: int = 0


class _Sink:
    """The file a ZipFile writes into: it keeps what it is given until the response takes it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.pending = 0
        return data


def zip_stream(entries: Iterable[Entry]) -> Iterator[bytes]:
    """A zip archive of `entries`, yielded in chunks as it is written. Entries marked not to be
    compressed (images, float vectors: deflate saves little on them) are stored."""
    sink = _Sink()
    now = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w") as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=now)
            info.compress_type = zipfile.ZIP_DEFLATED if entry.compress else zipfile.ZIP_STORED
            # A ZipInfo made by hand has no permissions: unzip would create unreadable files.
            info.external_attr = 0o644 << 16
            info.file_size = entry.size
            with archive.open(info, "w") as out:
                for chunk in entry.chunks:
                    out.write(chunk)
                    if sink.pending >= CHUNK:
                        yield sink.take()
        yield sink.take()
    yield sink.take()


def zip_response(chunks: Iterator[bytes], filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response


def file_chunks(path: Path | str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


@contextmanager
def _snapshot() -> Iterator[None]:
    """One consistent view of the database for a whole download: the .npy header announces N
    rows before they are read, and images imported or deleted meanwhile must not change N."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def version_for_export(collection: Collection, number: int | None) -> ModelVersion:
    """The collection's version `number`, or its active one; ModelVersion.DoesNotExist when
    there is no such version, NotExportable when no version is active."""
    if number is not None:
        return collection.versions.get(number=number)
    if collection.active_version_id is None:
        raise NotExportable("The collection has no active version yet: name one with ?version=.")
    return collection.versions.get(pk=collection.active_version_id)


def embeddings_name(version: ModelVersion) -> str:
    return f"{collection_slug(version.collection)}-v{version.number}-embeddings"


def export_embeddings(version: ModelVersion) -> Iterator[bytes]:
    """A zip of NAME.npy (float32 N x 128, the vectors search uses, rows by image id) and NAME.csv
    (`row, image_id, original_name, label`, one line per row of the .npy).

    The vectors are read in keyset batches and the .npy is written as they come: its header
    needs N first, so N is counted first, and everything is read in one snapshot."""
    if version.status != ModelVersion.Status.READY:
        raise NotExportable(
            f"Version {version.number} is {version.status}; only a ready version has a vector "
            "for every image."
        )
    name = embeddings_name(version)
    return _embeddings_zip(version, name)


def _embeddings_zip(version: ModelVersion, name: str) -> Iterator[bytes]:
    with _snapshot():
        count = Embedding.objects.filter(version=version).count()
        header = _npy_header(count)
        vectors = Entry(
            f"{name}.npy",
            _npy_chunks(version, header, count),
            compress=False,
            size=len(header) + count * EMBED_DIM * 4,
        )
        rows = Entry(f"{name}.csv", csv_chunks(EMBEDDING_FIELDS, _embedding_rows(version)))
        yield from zip_stream([vectors, rows])


def _npy_header(count: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (count, EMBED_DIM)}
    )
    return header.getvalue()


def _npy_chunks(version: ModelVersion, header: bytes, count: int) -> Iterator[bytes]:
    yield header
    after, written = 0, 0
    while written < count:
        ids, vectors = queries.vectors_after(version, after, min(VECTOR_BATCH, count - written))
        if not ids:
            break
        yield vectors.astype("<f4", copy=False).tobytes()
        after, written = ids[-1], written + len(ids)
    if written != count:
        # Only outside a snapshot (an enclosing transaction): a truncated file must not pass.
        raise RuntimeError(f"version {version.pk} lost rows while exported: {written}/{count}")


def _embedding_rows(version: ModelVersion) -> Iterator[tuple[int, int, str, str]]:
    rows = (
        Embedding.objects.filter(version=version)
        .order_by("image_id")
        .values_list("image_id", "image__original_name", "image__label")
    )
    for row, (image_id, original_name, label) in enumerate(rows.iterator(chunk_size=2000)):
        yield row, image_id, original_name, label


def checkpoint_directory(version: ModelVersion) -> Path:
    """The finished checkpoint of a trained version, or NotExportable saying why there is none."""
    if not version.checkpoint:
        seed = version.config.get("seed") if isinstance(version.config, dict) else None
        built = f" from seed {seed}" if seed is not None else ""
        raise NotExportable(
            f"Version {version.number} is the {version.get_kind_display()}, rebuilt{built} by "
            "every process: it has no checkpoint to download. Train a version first."
        )
    if version.status in (ModelVersion.Status.TRAINING, ModelVersion.Status.FAILED):
        raise NotExportable(
            f"Version {version.number} is {version.status}: its checkpoint is not a finished model."
        )
    directory = Path(settings.MODELS_DIR) / version.checkpoint
    if not directory.is_dir():
        raise NotExportable(f"Version {version.number}'s checkpoint files are gone from the disk.")
    return directory


def model_name(version: ModelVersion) -> str:
    return f"{collection_slug(version.collection)}-v{version.number}-model"


def export_model(version: ModelVersion) -> Iterator[bytes]:
    """A zip of the version's checkpoint directory under one folder NAME/: unzipped, that folder
    is what `python -m retrieval.autoret embed --checkpoint NAME` reads.

    Whatever files the directory holds go in (weights, config, any file a newer checkpoint
    format adds), except the training job's own leftovers (NOT_MODEL_FILES)."""
    directory = checkpoint_directory(version)
    name = model_name(version)
    files = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and not NOT_MODEL_FILES.fullmatch(path.name)
    )
    return zip_stream(
        Entry(
            str(PurePosixPath(name, *path.relative_to(directory).parts)),
            file_chunks(path),
            compress=path.suffix == ".json",
            size=path.stat().st_size,
        )
        for path in files
    )
