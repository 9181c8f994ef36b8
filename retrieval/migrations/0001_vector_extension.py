from __future__ import annotations

from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector first: every embedding table after this one needs the `vector` type."""

    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [VectorExtension()]
