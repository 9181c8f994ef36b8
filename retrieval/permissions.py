"""Who may do what in a collection. Outsiders get 404, never a 403 that reveals the collection."""

from __future__ import annotations

from typing import TypeVar

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404

from retrieval.models import Collection, Membership

Role = Membership.Role
InCollection = TypeVar("InCollection", bound=Model)


def role_in(user: User | AnonymousUser, collection: Collection) -> int | None:
    if not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    membership = Membership.objects.filter(collection=collection, user=user).first()
    return membership.role if membership else None


def visible_collections(user: User | AnonymousUser) -> QuerySet[Collection]:
    if not user.is_authenticated:
        return Collection.objects.none()
    if getattr(user, "is_superuser", False):
        return Collection.objects.all()
    return Collection.objects.filter(members__user=user)


def get_collection_for_user(
    user: User | AnonymousUser, pk: int, min_role: int = Role.ANNOTATOR
) -> Collection:
    """The collection if `user` holds at least `min_role` in it; 404 if not a member, else 403."""
    collection = Collection.objects.filter(pk=pk).first()
    role = role_in(user, collection) if collection is not None else None
    if collection is None or role is None:
        raise Http404("No such collection")
    if role < min_role:
        raise PermissionDenied(f"This needs the {Role(min_role).label} role in {collection.name}")
    return collection


def get_in_collection_for_user(
    user: User | AnonymousUser,
    queryset: QuerySet[InCollection],
    pk: int,
    min_role: int = Role.ANNOTATOR,
) -> InCollection:
    """A row that belongs to a collection (a job, a model version, a pair) under the same rule as
    its collection: 404 when it does not exist or `user` is no member, 403 for too low a role."""
    found = queryset.filter(pk=pk).first()
    if found is None:
        raise Http404("Not found")
    get_collection_for_user(user, found.collection_id, min_role)  # type: ignore[attr-defined]
    return found
