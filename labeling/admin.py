"""Site admins set each collection's labeling knobs (the strategy mix, lease, batch sizes) in
Django's admin; the counters and mining bookkeeping are shown, never edited."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from labeling.models import LabelingSettings


@admin.register(LabelingSettings)
class LabelingSettingsAdmin(admin.ModelAdmin):
    list_display = ["collection", "strategy_mix", "lease_seconds", "batch_size", "low_water"]
    search_fields = ["collection__name"]
    fields = [
        "collection",
        "strategy_mix",
        "lease_seconds",
        "batch_size",
        "low_water",
        "implied_pairs",
        "flagged_pairs",
        "mined_version",
        "mining_requested_at",
    ]
    readonly_fields = [
        "collection",
        "implied_pairs",
        "flagged_pairs",
        "mined_version",
        "mining_requested_at",
    ]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # created with the collection's first labeling request, with the defaults
