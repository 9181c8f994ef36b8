"""Site admins manage collections and who holds which role in them from Django's admin."""

from __future__ import annotations

from django.contrib import admin

from retrieval.models import Collection, Image, Membership, ModelVersion


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at", "active_version"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    raw_id_fields = ["active_version"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["collection", "user", "role"]
    list_filter = ["role", "collection"]
    autocomplete_fields = ["user", "collection"]


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
    readonly_fields = ["config", "metrics", "checkpoint"]
