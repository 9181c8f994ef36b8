"""Who may do what in a collection. Outsiders get 404, never a 403 that reveals the collection."""

from __future__ import annotations

from typing import TypeVar, cast

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db.models import IntegerField, Model, OuterRef, QuerySet, Subquery
from django.http import Http404

from retrieval.models import Collection, Membership

InCollection = TypeVar("InCollection", bound=Model)


def role_in(user: User | AnonymousUser, collection: Collection) -> int | None:
    if not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Membership.Role.ADMIN
    membership = Membership.objects.filter(collection=collection, user=user).first()
    return membership.role if membership else None


def may_create_collections(user: User | AnonymousUser) -> bool:
    """AUTORET_COLLECTION_CREATORS: "everyone" signed in, or only "staff" (and site admins)."""
    if not user.is_authenticated:
        return False
    return settings.AUTORET_COLLECTION_CREATORS == "everyone" or bool(
        getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)
    )


def visible_collections(user: User | AnonymousUser) -> QuerySet[Collection]:
    if not user.is_authenticated:
        return Collection.objects.none()
    if getattr(user, "is_superuser", False):
        return Collection.objects.all()
    return Collection.objects.filter(members__user=user)


def with_role(
    user: User | AnonymousUser,
    queryset: QuerySet[InCollection],
    collection_field: str = "collection",
) -> QuerySet[InCollection]:
    """`queryset` with `user`'s role in each row's collection as `_role` (None for no membership):
    the row and the permission check in one query. Superusers need no lookup."""
    if getattr(user, "is_superuser", False):
        return queryset
    member = cast(User, user)  # authenticated: the callers return 404 for anonymous first
    role = Membership.objects.filter(collection=OuterRef(collection_field), user=member).values(
        "role"
    )[:1]
    annotated = queryset.annotate(_role=Subquery(role, output_field=IntegerField()))
    return cast("QuerySet[InCollection]", annotated)


def _checked_role(user: User | AnonymousUser, row: Model | None) -> int | None:
    if row is None or not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Membership.Role.ADMIN
    return getattr(row, "_role", None)


def get_collection_for_user(
    user: User | AnonymousUser,
    pk: int,
    min_role: int = Membership.Role.ANNOTATOR,
    queryset: QuerySet[Collection] | None = None,
) -> Collection:
    """The collection if `user` holds at least `min_role` in it; 404 if not a member, else 403.
    One query (the membership is a subquery); `queryset` may add select_related."""
    if not user.is_authenticated:
        raise Http404("No such collection")
    base = Collection.objects.all() if queryset is None else queryset
    collection = with_role(user, base, "pk").filter(pk=pk).first()
    role = _checked_role(user, collection)
    if collection is None or role is None:
        raise Http404("No such collection")
    if role < min_role:
        raise PermissionDenied(
            f"This needs the {Membership.Role(min_role).label} role in {collection.name}"
        )
    return collection


def get_in_collection_for_user(
    user: User | AnonymousUser,
    queryset: QuerySet[InCollection],
    pk: int,
    min_role: int = Membership.Role.ANNOTATOR,
) -> InCollection:
    """A row that belongs to a collection (a job, a model version, a pair) under the same rule as
    its collection: 404 when it does not exist or `user` is no member, 403 for too low a role.
    One query: the membership is a subquery of the row's."""
    if not user.is_authenticated:
        raise Http404("Not found")
    found = with_role(user, queryset).filter(pk=pk).first()
    role = _checked_role(user, found)
    if found is None or role is None:
        raise Http404("Not found")
    if role < min_role:
        # Only the refusal names the collection: fetched here, not for every allowed request.
        name = Collection.objects.filter(pk=found.collection_id).values_list("name", flat=True)  # type: ignore[attr-defined]
        raise PermissionDenied(
            f"This needs the {Membership.Role(min_role).label} role in {name.first()}"
        )
    return found
