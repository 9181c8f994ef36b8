"""Site admins manage collections, who holds which role in them, users and API tokens from
Django's admin; every change of a role, user or token goes through retrieval/actions.py, which
writes it to the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.forms import BaseModelFormSet, ModelForm
from django.http import HttpRequest
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from retrieval import actions
from retrieval.models import Collection, Image, Membership, ModelVersion

# Characters of an API key the admin shows.
TOKEN_PREFIX = 6


def _by(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]  # the admin: always a signed-in site admin


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at", "active_version"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    # Search switches versions on the Models page only (checked, and logged as an activation).
    readonly_fields = ["active_version"]

    def save_formset(
        self, request: HttpRequest, form: ModelForm, formset: BaseModelFormSet, change: bool
    ) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        memberships = formset.save(commit=False)
        for removed in formset.deleted_objects:
            actions.remove_membership(removed, _by(request))
        for membership in memberships:
            actions.save_membership(membership, _by(request))


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["collection", "user", "role"]
    list_filter = ["role", "collection"]
    autocomplete_fields = ["user", "collection"]

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        actions.save_membership(obj, _by(request))

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        actions.remove_membership(obj, _by(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("user"):
            actions.remove_membership(membership, _by(request))


admin.site.unregister(User)


@admin.register(User)
class AuditedUserAdmin(UserAdmin):
    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        actions.save_user(obj, _by(request))


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class RevokeOnlyTokenAdmin(TokenAdmin):
    """Users create their own tokens (the API token page); site admins can only revoke them, and
    see only the first characters of a key: enough to tell tokens apart, not to use one.

    DRF's authtoken keeps keys in clear (the key is the primary key), so the list, the revoke
    page, its message and the admin's log are given a copy whose key is cut to that prefix. The
    copy is never saved: adding and changing are refused, and revoking goes by user.
    """

    list_display = ("key_prefix", "user", "created")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: TokenProxy) -> None:
        actions.revoke_token(obj.user, _by(request))

    @admin.display(description="key")
    def key_prefix(self, obj: TokenProxy) -> str:
        return token_prefix(obj.key)

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> TokenProxy | None:
        token = super().get_object(request, object_id, from_field)
        if token is not None:
            token.key = token_prefix(token.key)
        return token


def token_prefix(key: str) -> str:
    return f"{key[:TOKEN_PREFIX]}…"


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "collection", "original_name", "label", "width", "height", "format"]
    list_filter = ["collection", "format"]
    search_fields = ["original_name", "sha256", "label"]
    # Images come in through the import checks only; the admin never edits pixels or files.
    readonly_fields = ["file", "thumbnail", "sha256", "width", "height", "format"]
    show_full_result_count = False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["collection", "number", "kind", "status", "activated_at"]
    list_filter = ["collection", "kind", "status"]
    readonly_fields = ["status", "activated_at", "config", "metrics", "checkpoint"]
