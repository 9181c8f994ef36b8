"""manage.py train COLLECTION [--minutes M]: the browser's "Train" run in this process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.management.commands.import_images import find_collection
from worker import actions, pipeline
from worker.models import Job


class Command(BaseCommand):
    help = (
        "Train a new model version of a collection, embed the collection with it, evaluate it and "
        "activate it: the same steps a worker runs for the Train button, with progress bars."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("collection", help="collection name (or id)")
        parser.add_argument(
            "--minutes", type=float, help="training budget (default: AUTORET_TRAIN_MINUTES)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        collection = find_collection(options["collection"], create=False)
        try:
            job = actions.start_training(collection, None, options["minutes"], run_here=True)
        except (actions.TrainingAlreadyRunning, ValueError) as refused:
            raise CommandError(str(refused)) from None
        job = pipeline.run_here(job)
        if job.status != Job.Status.DONE:
            raise CommandError(f"job {job.pk} {job.status}: {job.error or job.phase}")
        version = job.version_or_fail()
        self.stdout.write(
            f"version {version.number} of {collection} is active: "
            f"{version.metrics.get('training', {}).get('steps', 0)} steps, "
            f"evaluation {version.metrics.get('evaluation', {})}"
        )
