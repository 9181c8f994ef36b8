"""What labeling tells the apps above it (worker/ connects them in its AppConfig.ready()).

Sent where the change is made, inside its transaction if it has one: a receiver that queues work or
starts a job does it on commit, so a rolled-back answer starts nothing.
"""

from __future__ import annotations

from django.dispatch import Signal

# An answer was stored (not a replayed idempotency key). Keyword argument: collection_id.
answer_recorded = Signal()
# The collection's open pairs run low and this request claimed the right to ask for more.
# Keyword arguments: collection_id, and unclaim, a callable that releases the claim when the
# mining task cannot be queued, so a later request tries again.
mining_wanted = Signal()
