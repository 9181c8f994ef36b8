"""python manage.py load_demo: the Fashion-MNIST demo collection that `make run` loads."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from retrieval.imports import Item, Limits, embed_now, from_image_set, import_items
from retrieval.models import Collection, Membership
from retrieval.signals import demo_loaded

DEMO_NAME = "Fashion-MNIST demo"
ALL = 70_000  # the training split (60,000) and the test split (10,000)
TRAIN_SIZE = 60_000


def demo_size(value: str) -> int:
    if value == "all":
        return ALL
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number or 'all'") from None
    if not 1 <= size <= TRAIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"{size} is outside 1..{TRAIN_SIZE} (the training split); use 'all' for {ALL}"
        )
    return size


class Command(BaseCommand):
    help = (
        f"Create the collection {DEMO_NAME!r} from Fashion-MNIST: N training images balanced "
        "across the 10 classes (the same ones every time), or all 70,000. Does nothing when the "
        "collection already holds that many."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--size", type=demo_size, default=3000, help="images to load, or 'all' (default 3000)"
        )
        parser.add_argument("--all", action="store_true", help=f"all {ALL} images")
        parser.add_argument("--owner", help="user name to make an admin of the collection")
        parser.add_argument("--no-embed", action="store_true", help="do not embed the images")

    def handle(self, *args: Any, **options: Any) -> None:
        from retrieval.autoret.data import DataError, load_dataset

        size: int = ALL if options["all"] else options["size"]
        collection, _ = Collection.objects.get_or_create(
            name=DEMO_NAME,
            defaults={"description": "Fashion-MNIST (Zalando): 28x28 clothing images, 10 classes."},
        )
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"no user named {options['owner']!r}")
            Membership.objects.update_or_create(
                collection=collection, user=owner, defaults={"role": Membership.Role.ADMIN}
            )
        have = collection.images.count()
        if have >= size:
            demo_loaded.send(sender=Collection, collection_id=collection.pk)
            self.stdout.write(f"demo      {DEMO_NAME}: {have} images, already loaded")
            return
        try:
            train = load_dataset("fashion-mnist:train")
            test = load_dataset("fashion-mnist:test") if size > TRAIN_SIZE else None
        except DataError as error:
            raise CommandError(f"{error} (Debian package dataset-fashion-mnist)") from None
        items: Iterator[Item] = from_image_set(
            train, "fashion-mnist-train", balanced(train.labels, min(size, TRAIN_SIZE))
        )
        if test is not None:
            items = itertools.chain(items, from_image_set(test, "fashion-mnist-test"))
        limits = dataclasses.replace(Limits.from_settings(), max_files=ALL, max_seconds=None)
        # Images already there are reported as duplicates, so an interrupted load just resumes.
        with tqdm(total=size, unit="image", desc="demo", disable=options["verbosity"] == 0) as bar:
            report = import_items(collection, items, limits, progress=bar.update)
        if report.rejected:
            name, reason = report.rejected[0]
            raise CommandError(
                f"{len(report.rejected)} demo images rejected, e.g. {name}: {reason}"
            )
        if report.created and not options["no_embed"]:
            embed_now(collection)
        demo_loaded.send(sender=Collection, collection_id=collection.pk)
        self.stdout.write(
            f"demo      {DEMO_NAME}: {have + len(report.created)} images "
            f"({len(report.created)} added now)"
        )


def balanced(labels: torch.Tensor | None, size: int) -> list[int]:
    """The first size/10 images of each class (the remainder to the first classes), in id order."""
    if labels is None:
        return list(range(size))
    classes = sorted(int(c) for c in labels.unique())
    per_class, extra = divmod(size, len(classes))
    chosen: list[int] = []
    for rank, class_id in enumerate(classes):
        take = per_class + (1 if rank < extra else 0)
        chosen += (labels == class_id).nonzero().flatten()[:take].tolist()
    return sorted(chosen)
