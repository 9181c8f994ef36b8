"""Actions that span models in the retrieval app."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from retrieval.models import Collection, Image, Membership


@transaction.atomic
def create_collection(user: User | None, name: str, description: str = "") -> Collection:
    """A new collection whose creator administers it (nobody else can see it until invited)."""
    collection = Collection.objects.create(name=name, description=description, created_by=user)
    if user is not None:
        Membership.objects.create(collection=collection, user=user, role=Membership.Role.ADMIN)
    return collection


def images_after(
    collection: Collection, after: int | None, limit: int
) -> tuple[list[Image], int | None]:
    """One keyset page of `collection`'s images by id (no OFFSET, no COUNT), and the id to
    continue after, or None on the last page. Uses the (collection, id) index."""
    images = Image.objects.filter(collection=collection).order_by("id")
    if after is not None:
        images = images.filter(id__gt=after)
    page = list(images[: limit + 1])
    if len(page) > limit:
        return page[:limit], page[limit - 1].pk
    return page, None
