"""Actions that span models in the retrieval app: collections, who may use them, accounts."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from rest_framework.authtoken.models import Token

from audit.models import Event
from retrieval.models import Collection, Image, Membership

# Site-wide rights of a user: changing them is a role change for every collection at once.
USER_RIGHTS = ("is_superuser", "is_staff", "is_active")


@transaction.atomic
def create_collection(user: User | None, name: str, description: str = "") -> Collection:
    """A new collection whose creator administers it (nobody else can see it until invited)."""
    collection = Collection.objects.create(name=name, description=description, created_by=user)
    if user is not None:
        Membership.objects.create(collection=collection, user=user, role=Membership.Role.ADMIN)
    Event.record(Event.Action.COLLECTION_CREATE, user, collection, collection, name=name)
    return collection


@transaction.atomic
def save_membership(membership: Membership, by: User | None) -> Membership:
    """Saves a new or edited membership (the admin's forms) and logs the change: an added
    member, a changed role, or (a row moved to another user or collection) a removal and an add."""
    before = (
        Membership.objects.select_for_update().filter(pk=membership.pk).first()
        if membership.pk
        else None
    )
    membership.save()
    role = Membership.Role(membership.role).label
    if before is None or (before.user_id, before.collection_id) != (
        membership.user_id,
        membership.collection_id,
    ):
        if before is not None:
            _log_removal(before, by)
        Event.record(
            Event.Action.MEMBER_ADD, by, membership.collection_id, membership.user, role=role
        )
    elif before.role != membership.role:
        Event.record(
            Event.Action.MEMBER_ROLE, by, membership.collection_id, membership.user,
            role=role, was=Membership.Role(before.role).label,
        )  # fmt: skip
    return membership


@transaction.atomic
def remove_membership(membership: Membership, by: User | None) -> None:
    """Takes a member out of a collection (they get 404 for it from now on) and logs it."""
    deleted, _ = Membership.objects.filter(pk=membership.pk).delete()
    if deleted:
        _log_removal(membership, by)


def _log_removal(membership: Membership, by: User | None) -> None:
    Event.record(
        Event.Action.MEMBER_REMOVE, by, membership.collection_id, membership.user,
        role=Membership.Role(membership.role).label,
    )  # fmt: skip


@transaction.atomic
def save_user(user: User, by: User | None) -> User:
    """Saves a user from the admin's forms, logging a new account and any change of the
    site-wide rights (site admin, staff, active)."""
    before = User.objects.filter(pk=user.pk).first() if user.pk else None
    user.save()
    if before is None:
        rights = {name: getattr(user, name) for name in USER_RIGHTS}
        Event.record(Event.Action.USER_CREATE, by, None, user, username=user.username, **rights)
    else:
        changed = {
            name: getattr(user, name)
            for name in USER_RIGHTS
            if getattr(before, name) != getattr(user, name)
        }
        if changed:
            Event.record(Event.Action.USER_CHANGE, by, None, user, **changed)
    return user


@transaction.atomic
def create_token(user: User) -> str:
    """A new API token for `user`, replacing (so revoking) any earlier one; the key is returned
    once and never logged."""
    replaced, _ = Token.objects.filter(user=user).delete()
    key = Token.objects.create(user=user).key
    Event.record(Event.Action.TOKEN_CREATE, user, None, user, replaced=bool(replaced))
    return key


@transaction.atomic
def revoke_token(user: User, by: User) -> bool:
    """Revokes `user`'s API token (`by`: themselves, or a site admin); False if they had none."""
    deleted, _ = Token.objects.filter(user=user).delete()
    if deleted:
        Event.record(Event.Action.TOKEN_REVOKE, by, None, user, username=user.username)
    return bool(deleted)


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
