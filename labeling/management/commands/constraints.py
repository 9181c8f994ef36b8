"""python manage.py constraints export|import COLLECTION FILE: constraints as CSV or JSONL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from labeling import exchange
from retrieval.models import Collection


def _format(path: str) -> str:
    return "jsonl" if path.lower().endswith((".jsonl", ".ndjson")) else "csv"


class Command(BaseCommand):
    help = (
        "Export a collection's constraints to FILE (CSV, or JSONL for .jsonl; '-' writes CSV to "
        "stdout) or import them from FILE: all or nothing, every bad line reported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["export", "import"])
        parser.add_argument("collection", help="collection name (or id)")
        parser.add_argument("file", help="a .csv or .jsonl path; '-' for stdout on export")

    def handle(self, *args: Any, **options: Any) -> None:
        key = options["collection"]
        # As import_images: a name first, then an id.
        collection = Collection.objects.filter(name=key).first()
        if collection is None and key.isdigit():
            collection = Collection.objects.filter(pk=int(key)).first()
        if collection is None:
            raise CommandError(f"no collection named or numbered {key!r}")
        path: str = options["file"]
        if options["action"] == "export":
            chunks = (
                exchange.export_jsonl(collection)
                if _format(path) == "jsonl"
                else exchange.export_csv(collection)
            )
            if path == "-":
                sys.stdout.writelines(chunks)
                return
            with open(path, "w", encoding="utf-8", newline="") as out:
                out.writelines(chunks)
            self.stdout.write(f"wrote {path}")
            return
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read {path}: {error}") from None
        try:
            stored = exchange.import_constraints(collection, text, _format(path))
        except exchange.ImportFailed as failed:
            raise CommandError("nothing imported:\n" + "\n".join(failed.errors)) from None
        self.stdout.write(f"imported {stored} answers into {collection.name}")
