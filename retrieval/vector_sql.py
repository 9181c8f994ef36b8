"""What the raw SQL of queries.py and indexes.py shares: the embeddings table, version ids written
as literals, and a cursor that speaks pgvector's `vector` type."""

from __future__ import annotations

import weakref
from typing import Any

from django.db import connection
from pgvector.psycopg import register_vector

from retrieval.models import Embedding, ModelVersion

TABLE = Embedding._meta.db_table

# Raw psycopg connections that already know the `vector` type (registering costs a round trip).
_registered: weakref.WeakSet[Any] = weakref.WeakSet()

VersionRef = ModelVersion | int


def version_id_of(version: VersionRef) -> int:
    # Always an int: it is written into SQL as a literal (see version_filter).
    return int(version.pk if isinstance(version, ModelVersion) else version)


def version_filter(version_id: int) -> str:
    # A literal, not a bound parameter: the planner can only match a partial index whose
    # predicate it can prove, and a generic plan over a parameter proves nothing.
    return f"version_id = {int(version_id)}"


def vector_cursor() -> Any:
    """A Django cursor whose raw psycopg connection adapts numpy arrays to and from `vector`."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _registered:
        register_vector(raw)
        _registered.add(raw)
    return connection.cursor()
