"""Numbers shared by the network and the platform's schema; importing this loads no torch."""

from __future__ import annotations

# The embedding dimension D: the network's projection, the pgvector column and its HNSW index.
EMBED_DIM = 128
