"""manage.py embed COLLECTION: embeds the images that have no vector in the active version."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.management.commands.import_images import find_collection
from worker import actions, pipeline
from worker.models import Job


class Command(BaseCommand):
    help = (
        "Embed a collection's images that have no vector in its active version (the untrained "
        "network when nothing is trained yet), build the index, with a progress bar."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("collection", help="collection name (or id)")

    def handle(self, *args: Any, **options: Any) -> None:
        collection = find_collection(options["collection"], create=False)
        job = pipeline.run_here(actions.start_embedding(collection))
        if job.status != Job.Status.DONE:
            raise CommandError(f"job {job.pk} {job.status}: {job.error or job.phase}")
        collection.refresh_from_db()
        count = collection.active_version.embeddings.count() if collection.active_version else 0
        self.stdout.write(f"{collection}: {count} images embedded in the active version")
