"""The audit log in Django's admin: read-only, for site admins (every collection, and the rows
that belong to none: users and API tokens)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["at", "username", "action", "collection_id", "target_type", "target_id"]
    list_filter = ["action"]
    search_fields = ["username"]
    readonly_fields = [field.name for field in Event._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
