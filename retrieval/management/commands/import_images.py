"""python manage.py import_images COLLECTION PATH: a folder, .zip, .npz or fashion-mnist:SPLIT."""

from __future__ import annotations

import dataclasses
import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval.imports import (
    ImportReport,
    Item,
    Limits,
    embed_now,
    from_folder,
    from_image_set,
    from_uploads,
    import_items,
)
from retrieval.models import Collection


class Command(BaseCommand):
    help = (
        "Import images into a collection from a folder (class subfolders can become labels), a "
        ".zip, an .npz (uint8 'images', optional 'labels') or fashion-mnist:train|test. Every "
        "file is checked as in a browser upload; duplicates are skipped; a report is printed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("collection", help="collection name (or id)")
        parser.add_argument("path", help="folder, .zip, .npz, or fashion-mnist:train|test")
        parser.add_argument(
            "--labels", action="store_true", help="use folder names (in a folder or zip) as labels"
        )
        parser.add_argument("--limit", type=int, help="import at most N images")
        parser.add_argument("--create", action="store_true", help="create the collection if new")
        parser.add_argument(
            "--no-embed", action="store_true", help="skip embedding the new images afterwards"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit: int | None = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be a positive number")
        collection = find_collection(options["collection"], create=options["create"])
        # The per-upload file cap protects the web server; a command may import a whole data set.
        # --limit takes the first N files below, so a larger zip is not refused whole.
        limits = dataclasses.replace(Limits.from_settings(), max_files=10**9, max_seconds=None)
        items, total = items_for(options["path"], limits, options["labels"])
        if limit is not None:
            items = itertools.islice(items, limit)
            total = min(total, limit) if total is not None else limit
        with tqdm(
            total=total, unit="file", desc="import", disable=options["verbosity"] == 0
        ) as bar:
            report = import_items(collection, items, limits, progress=bar.update)
        self.stdout.write(format_report(collection, report))
        if report.created and not options["no_embed"]:
            embed_now(collection)


def find_collection(name_or_id: str, create: bool) -> Collection:
    collection = Collection.objects.filter(name=name_or_id).first()
    if collection is None and name_or_id.isdigit():
        collection = Collection.objects.filter(pk=int(name_or_id)).first()
    if collection is not None:
        return collection
    if not create:
        raise CommandError(f"no collection named {name_or_id!r} (add --create to create it)")
    return Collection.objects.create(name=name_or_id)


def items_for(spec: str, limits: Limits, labels: bool) -> tuple[Iterator[Item], int | None]:
    """The files `spec` names and, when known up front, how many (for the progress bar)."""
    from retrieval.autoret.data import DataError, load_dataset

    path = Path(spec)
    if spec.startswith("fashion-mnist:") or path.suffix == ".npz":
        try:
            data = load_dataset(spec)
        except DataError as error:
            raise CommandError(str(error)) from None
        prefix = spec.replace(":", "-") if spec.startswith("fashion-mnist:") else path.stem
        return from_image_set(data, prefix), len(data)
    if path.is_dir():
        return from_folder(path, labels), None
    if path.is_file():
        if zipfile.is_zipfile(path):
            handle = path.open("rb")
            return from_uploads([handle], limits, labels), None
        return from_uploads([path.open("rb")], limits), 1
    raise CommandError(
        f"{spec}: not an existing folder, .zip, .npz or image file, nor fashion-mnist:train|test"
    )


def format_report(collection: Collection, report: ImportReport) -> str:
    lines = [
        f"{collection.name}: {len(report.created)} created, {len(report.duplicates)} duplicates, "
        f"{len(report.rejected)} rejected"
    ]
    lines += [f"  rejected {name}: {reason}" for name, reason in report.rejected]
    return "\n".join(lines)
