"""Importing images into a collection: the one code path for the browser, the API and commands.

Every file is checked by its content, never its name: Pillow must open it with one of the allowed
decoders, verify it and decode it fully, under a pixel limit that is an error (a decompression
bomb), not Pillow's warning. Zips are expanded in memory entry by entry under limits on entries and
expanded bytes, and entries that would escape the archive (absolute paths, `..`) are refused.
A file is stored completely (original bytes, WEBP thumbnail, row) or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from audit.models import Event
from retrieval.deletion import delete_unreferenced
from retrieval.models import Collection, Image
from retrieval.signals import images_added

if TYPE_CHECKING:
    from retrieval.autoret.data import ImageSet

logger = logging.getLogger(__name__)

# Pillow's decoders for these only: every other format (TIFF, SVG through plugins, PSD, ...) is
# attack surface the platform has no use for.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Query images are decoded to at least this many pixels a side when the format can decode
# smaller (JPEG): well above any model's input size.
QUERY_SIDE = 512
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
THUMBNAIL_SIZE = 256
# Rows are written per batch; a batch's decoded thumbnails and originals are held in memory.
BATCH_FILES = 200
BATCH_BYTES = 64 * 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Markup that makes a file a document to a browser that sniffs content instead of trusting the
# Content-Type (old Internet Explorer, a proxy or CDN that drops the headers, a file saved and
# opened locally): a valid image carrying it is an HTML/SVG/XML polyglot that such a browser could
# run as a page in our origin, so it is refused, not stored. The tags are the document markers
# sniffers look for (doctype, html, head, body, the XML declaration) and the elements that run or
# embed active content (script, iframe, frame(set), object, embed, svg). A tag counts only when a
# tag-name terminator follows it (whitespace, "/" or ">"), which keeps chance matches in compressed
# pixel data rare: about 6e-11 per byte of random data, ~1 in 3,000 for a 5 MB photo (mostly
# "<svg"). This is no complete HTML filter (an `<img onerror>` fragment passes): the media view's
# headers (the stored type, nosniff, a sandboxing CSP) remain the first defence.
# One case-insensitive regex pass over the bytes already read (at most the file-size limit): about
# 0.1 s for 20 MiB on the shared test VM, faster than lowering a copy and finding each tag.
MARKUP = re.compile(
    rb"<(?:!doctype\s+html|html|head|body|script|iframe|frameset|frame|object|embed|svg|\?xml)"
    rb"[\s/>]",
    re.IGNORECASE,
)


class Rejected(Exception):
    """A file that will not be stored; the message is the reason shown to the user."""


@dataclass
class Limits:
    max_file_bytes: int
    max_pixels: int
    max_zip_bytes: int
    max_files: int
    max_collection_images: int
    # Seconds an import may check and store files before it refuses the rest: a web request
    # must end (its audit row written, its embedding queued) before gunicorn's timeout kills it.
    # None for commands.
    max_seconds: float | None = None

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_file_bytes=settings.AUTORET_MAX_UPLOAD_BYTES,
            max_pixels=settings.AUTORET_MAX_IMAGE_PIXELS,
            max_zip_bytes=settings.AUTORET_MAX_ZIP_BYTES,
            max_files=settings.AUTORET_MAX_FILES_PER_UPLOAD,
            max_collection_images=settings.AUTORET_MAX_IMAGES_PER_COLLECTION,
            max_seconds=settings.AUTORET_IMPORT_SECONDS,
        )


@dataclass
class Candidate:
    """One file to import: its name for the report, a way to read it, and an optional label.

    Reading is deferred so that a folder or a zip is never held in memory all at once.
    """

    name: str
    read: Callable[[], bytes]
    label: str = ""


@dataclass
class ImportReport:
    created: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # (name, existing image id)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    # How many more images the collection may take (AUTORET_MAX_IMAGES_PER_COLLECTION).
    room: int = 0

    @property
    def stored_nothing(self) -> bool:
        """True when the upload was all bad: callers answer that with a 4xx."""
        return not self.created and not self.duplicates and bool(self.rejected)


@dataclass
class _Checked:
    name: str
    data: bytes
    sha256: str
    format: str
    width: int
    height: int
    thumbnail: bytes
    label: str


def check_image(name: str, data: bytes, limits: Limits, label: str = "") -> _Checked:
    """Validates one file by its content; raises Rejected with the reason."""
    if not data:
        raise Rejected("empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise Rejected(f"file is {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    allowed = ", ".join(ALLOWED_FORMATS)
    with _decoding(limits):
        with PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            _check_pixels(image, limits)
            image.verify()
        # verify() leaves the image unusable; decoding fully catches truncated pixel data.
        with PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            _check_pixels(image, limits)
            image.load()
            image_format = str(image.format)
            width, height = image.size
            thumbnail = _thumbnail(image)
    if image_format not in ALLOWED_FORMATS:
        raise Rejected(f"not an image in an allowed format ({allowed})")
    # After decoding, so that a file that is no image at all keeps that reason.
    markup = MARKUP.search(data)
    if markup is not None:
        tag = markup[0][:-1].decode("ascii", "replace")
        raise Rejected(
            f"contains HTML markup ({tag!r} at byte {markup.start()}): "
            "a polyglot file is not accepted"
        )
    return _Checked(
        name=name,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=image_format,
        width=width,
        height=height,
        thumbnail=thumbnail,
        label=label[:100],
    )


@contextlib.contextmanager
def _decoding(limits: Limits) -> Iterator[None]:
    """Pillow's ways of failing on a bad file, as Rejected with the reason."""
    allowed = ", ".join(ALLOWED_FORMATS)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning must stop us too.
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            yield
        except Rejected:
            raise
        except UnidentifiedImageError:
            raise Rejected(f"not an image in an allowed format ({allowed})") from None
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            raise Rejected(
                f"decompression bomb: more than the limit of {limits.max_pixels} pixels"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
            raise Rejected(f"corrupt or truncated {allowed} image ({error})") from None


def decode_query(data: bytes, limits: Limits, max_pixels: int) -> PILImage.Image:
    """A query image (search by upload), decoded no larger than embedding needs: it is never
    stored, so unlike check_image nothing else reads it. A JPEG is decoded at 1/2 to 1/8 scale
    (Pillow's draft, in the decoder: a 7,000 x 7,000 photo costs what an 875 x 875 one does);
    an image that would still decode to more than `max_pixels` is refused before decoding."""
    if not data:
        raise Rejected("empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise Rejected(f"file is {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    with _decoding(limits):
        image = PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        _check_pixels(image, limits)
        if image.format == "JPEG":
            image.draft(None, (QUERY_SIDE, QUERY_SIDE))
        width, height = image.size
        if width * height > max_pixels:
            raise Rejected(
                f"{width}x{height} pixels is over the limit of {max_pixels} for a query image; "
                "search with a smaller image (a JPEG of any size is fine)"
            )
        image.load()
    return image


def _check_pixels(image: PILImage.Image, limits: Limits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise Rejected(
            f"decompression bomb: {width}x{height} pixels is over the limit of {limits.max_pixels}"
        )


def _thumbnail(image: PILImage.Image) -> bytes:
    image.seek(0)
    frame = image.convert("RGBA" if _has_alpha(image) else "RGB")
    frame.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    frame.save(out, format="WEBP", quality=80)
    return out.getvalue()


def _has_alpha(image: PILImage.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


# Sources: each turns some input into Candidates (or immediate rejections).

Item = Candidate | tuple[str, str]  # a file to check, or (name, reason) rejected on the way in


def from_uploads(
    files: Iterable[IO[bytes]], limits: Limits, labels: bool = False
) -> Iterator[Item]:
    """Uploaded files (Django UploadedFile or any binary file with a .name); zips are expanded."""
    for upload in files:
        name = _clean_name(getattr(upload, "name", None) or "upload")
        size = getattr(upload, "size", None)
        head = upload.read(4)
        upload.seek(0)
        if head in ZIP_MAGIC:
            if size is not None and size > limits.max_zip_bytes:
                yield name, f"zip file is {size} bytes, over the limit of {limits.max_zip_bytes}"
                continue
            yield from from_zip(name, upload, limits, labels)
        elif size is not None and size > limits.max_file_bytes:
            # Refused before reading it into memory.
            yield name, f"file is {size} bytes, over the limit of {limits.max_file_bytes}"
        else:
            yield Candidate(name, upload.read)


def from_zip(name: str, fileobj: IO[bytes], limits: Limits, labels: bool) -> Iterator[Item]:
    """The entries of a zip; the whole zip is refused when its declared expanded size or its
    number of files is over the limit, so a zip bomb is never expanded. zipfile stops each entry
    at its declared size."""
    try:
        archive = zipfile.ZipFile(fileobj)
        entries = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        yield name, f"not a readable zip file ({error})"
        return
    if len(entries) > limits.max_files:
        # Refused from the central directory alone: reading each entry only to reject it past
        # the cap would cost the server the work the cap is there to spare it.
        yield (
            name,
            (
                f"zip holds {len(entries)} files, over the limit of {limits.max_files} files "
                "per upload; nothing in it was imported"
            ),
        )
        return
    total = sum(info.file_size for info in entries)
    if total > limits.max_zip_bytes:
        yield (
            name,
            (
                f"zip expands to {total} bytes, over the limit of {limits.max_zip_bytes}; "
                "nothing in it was imported"
            ),
        )
        return
    for info in entries:
        entry = info.filename
        shown = f"{name}:{_clean_name(entry)}"
        path = PurePosixPath(entry.replace("\\", "/"))
        if entry.startswith(("/", "\\")) or path.is_absolute() or (":" in path.parts[0]):
            yield shown, "absolute path in zip entry (refused: it could write outside the archive)"
            continue
        if ".." in path.parts:
            yield shown, "'..' in zip entry path (refused: it could write outside the archive)"
            continue
        if path.parts[0] == "__MACOSX" or any(part.startswith(".") for part in path.parts):
            continue  # macOS resource forks and hidden files are not images anyone uploaded
        if info.file_size > limits.max_file_bytes:
            yield (
                shown,
                f"file is {info.file_size} bytes, over the limit of {limits.max_file_bytes}",
            )
            continue
        label = path.parent.name if labels and len(path.parts) > 1 else ""
        yield Candidate(shown, _zip_reader(archive, info, limits), label)


def _zip_reader(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits
) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with archive.open(info) as entry:
                return entry.read(limits.max_file_bytes + 1)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as error:
            raise Rejected(f"cannot read this zip entry ({error})") from None

    return read


def from_folder(folder: Path, labels: bool = False) -> Iterator[Item]:
    """Every regular file under `folder` (sorted, hidden files skipped); with `labels`, the name
    of each file's folder (below `folder`) becomes its label."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        label = relative.parent.name if labels and len(relative.parts) > 1 else ""
        yield Candidate(str(relative), path.read_bytes, label)


def from_image_set(
    data: ImageSet, prefix: str, indices: Iterable[int] | None = None
) -> Iterator[Item]:
    """Images of a loaded data set (.npz, Fashion-MNIST), each encoded as PNG when it is read.

    Class labels are kept as ground truth: named when the data set names its classes.
    """
    classes = data.class_names
    labels = data.labels if data.labels is not None and data.labels.dim() == 1 else None
    for index in range(len(data)) if indices is None else indices:
        label = ""
        if labels is not None:
            class_id = int(labels[index])
            label = classes[class_id] if classes and class_id < len(classes) else str(class_id)
        name = data.names[index] if data.names else f"{prefix}-{index:05d}.png"
        yield Candidate(name, functools.partial(_png, data, index), label)


def _png(data: ImageSet, index: int) -> bytes:
    array = data.images[index].permute(1, 2, 0).numpy()  # C x H x W -> H x W x C
    picture = PILImage.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _clean_name(name: str) -> str:
    # Names are shown and stored, never used as paths: drop control characters (NUL included).
    return "".join(ch for ch in name if ch.isprintable())[:255] or "unnamed"


# Storing.


def import_items(
    collection: Collection,
    items: Iterable[Item],
    limits: Limits | None = None,
    progress: Callable[[int], object] | None = None,
    *,
    by: User | None = None,
    via: str = "command",
) -> ImportReport:
    """Checks and stores `items` in `collection`; returns what was created, skipped and refused.

    `progress(n)` is called after each n files are handled (for a progress bar). The import is
    logged (who, `via` browser, api or command, and the counts) once it is done: the files are
    stored in batches, each in its own transaction, so the row follows the last one.
    """
    limits = limits or Limits.from_settings()
    report = ImportReport()
    # A first estimate, so a full collection is refused before any file is written; each batch
    # counts again under the collection's lock (_room_locked).
    report.room = max(0, limits.max_collection_images - collection.images.count())
    batch: list[_Checked] = []
    batch_bytes = 0
    seen = 0
    deadline = time.monotonic() + limits.max_seconds if limits.max_seconds else None
    for item in items:
        seen += 1
        if seen > limits.max_files:
            name = item[0] if isinstance(item, tuple) else item.name
            report.rejected.append((name, f"over the limit of {limits.max_files} files per upload"))
            continue
        if deadline is not None and time.monotonic() > deadline:
            name = item[0] if isinstance(item, tuple) else item.name
            report.rejected.append((name, _out_of_time(limits)))
            continue
        if isinstance(item, tuple):
            report.rejected.append(item)
        else:
            try:
                checked = check_image(item.name, item.read(), limits, item.label)
            except Rejected as error:
                report.rejected.append((item.name, str(error)))
            else:
                batch.append(checked)
                batch_bytes += len(checked.data) + len(checked.thumbnail)
        if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
            _store(collection, batch, report, limits)
            batch, batch_bytes = [], 0
        if progress is not None:
            progress(1)
    _store(collection, batch, report, limits)
    Event.record(
        Event.Action.IMPORT, by, collection,
        via=via, created=len(report.created), duplicates=len(report.duplicates),
        rejected=len(report.rejected),
    )  # fmt: skip
    return report


def _store(
    collection: Collection, batch: list[_Checked], report: ImportReport, limits: Limits
) -> None:
    if not batch:
        return
    existing = dict(
        Image.objects.filter(
            collection=collection, sha256__in=[c.sha256 for c in batch]
        ).values_list("sha256", "id")
    )
    to_create: list[tuple[_Checked, Image]] = []
    # A second copy within this upload is a duplicate of the first, whose id exists once stored.
    repeats: list[_Checked] = []
    for checked in batch:
        if checked.sha256 in existing:
            report.duplicates.append((checked.name, existing[checked.sha256]))
        elif any(checked.sha256 == first.sha256 for first, _ in to_create):
            repeats.append(checked)
        else:
            image = Image(
                collection=collection,
                sha256=checked.sha256,
                width=checked.width,
                height=checked.height,
                format=checked.format,
                original_name=checked.name[:255],
                label=checked.label,
            )
            to_create.append((checked, image))
    if len(to_create) > report.room:
        to_create, full = to_create[: report.room], to_create[report.room :]
        report.rejected.extend((checked.name, _full(limits)) for checked, _ in full)
    written: list[str] = []
    try:
        for checked, image in to_create:
            image.file.name = _write(image, "file", f"x.{EXTENSIONS[checked.format]}", checked.data)
            written.append(image.file.name)
            image.thumbnail.name = _write(image, "thumbnail", "x.webp", checked.thumbnail)
            written.append(image.thumbnail.name)
        with transaction.atomic():
            room = _room_locked(collection, limits)
            if len(to_create) > room:
                # Another import filled the collection since this one counted.
                to_create, full = to_create[:room], to_create[room:]
                report.rejected.extend((checked.name, _full(limits)) for checked, _ in full)
            Image.objects.bulk_create([image for _, image in to_create])
    except IntegrityError:
        # Another import stored some of the same images meanwhile: fall back to one row at a time.
        _store_one_by_one(collection, to_create, report, limits)
        delete_unreferenced(written)
    except BaseException:
        delete_unreferenced(written)
        raise
    else:
        report.created.extend(image.pk for _, image in to_create)
        report.room = room - len(to_create)
        if len(written) > 2 * len(to_create):
            delete_unreferenced(written)
    ids = dict(
        Image.objects.filter(
            collection=collection, sha256__in=[c.sha256 for c in repeats]
        ).values_list("sha256", "id")
    )
    for checked in repeats:
        if checked.sha256 in ids:
            report.duplicates.append((checked.name, ids[checked.sha256]))
        else:  # its first copy was refused because the collection is full
            report.rejected.append((checked.name, _full(limits)))


def _room_locked(collection: Collection, limits: Limits) -> int:
    """How many more images the collection may take, counted under its row lock, which is held
    to the end of the caller's transaction: two imports at once store their batches one after
    the other and count each other's images. FOR NO KEY UPDATE, so rows that merely reference
    the collection (answers, audit rows) are not held up."""
    list(Collection.objects.select_for_update(no_key=True).filter(pk=collection.pk).values("pk"))
    return max(
        0, limits.max_collection_images - Image.objects.filter(collection=collection).count()
    )


def _out_of_time(limits: Limits) -> str:
    return (
        f"not imported: this upload used its {limits.max_seconds:g} seconds; upload it again "
        "for the rest (the files already stored are reported as duplicates)"
    )


def _full(limits: Limits) -> str:
    return f"the collection is full: it holds the limit of {limits.max_collection_images} images"


def _store_one_by_one(
    collection: Collection,
    to_create: list[tuple[_Checked, Image]],
    report: ImportReport,
    limits: Limits,
) -> None:
    for checked, image in to_create:
        image.pk = None
        try:
            with transaction.atomic():
                if not _room_locked(collection, limits):
                    report.rejected.append((checked.name, _full(limits)))
                    continue
                image.save()
        except IntegrityError:
            other = Image.objects.get(collection=collection, sha256=checked.sha256)
            report.duplicates.append((checked.name, other.pk))
        else:
            report.created.append(image.pk)
            report.room -= 1


def _write(image: Image, field_name: str, filename: str, data: bytes) -> str:
    upload_to = Image._meta.get_field(field_name).upload_to  # type: ignore[union-attr]
    name = str(upload_to(image, filename))
    if default_storage.exists(name):
        # Content-addressed: an existing file under this name holds these very bytes (left by an
        # import whose transaction failed, or one racing us), so it can be used as it is.
        return name
    return default_storage.save(name, ContentFile(data))


# Embedding new images, so they become searchable: the only two call sites.


def embed_later(collection: Collection) -> None:
    """From web and API uploads: the worker embeds the new images once this request commits
    (worker/hooks.py queues an embedding job). A broker outage leaves the images stored; an
    embedding job embeds every image without a vector, so the next upload's job picks them up
    too."""
    images_added.send(sender=Collection, collection_id=collection.pk)


def embed_now(collection: Collection) -> None:
    """From management commands: embed in this process, so the command ends with search ready."""
    from retrieval.embedding import embed_new_images

    embed_new_images(collection)
