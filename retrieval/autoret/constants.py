"""Numbers shared by the network and the platform's schema; importing this loads no torch."""

from __future__ import annotations

# The embedding dimension D: the network's projection, the pgvector column and its HNSW index.
EMBED_DIM = 128

# The AutoEmbedder cannot-link target distance alpha when a training config gives none
# (TrainConfig.alpha; the platform reads it for versions that record no training config).
DEFAULT_ALPHA = 10.0
