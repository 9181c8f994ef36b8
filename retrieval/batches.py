"""Walking a collection's images in id order, a batch at a time, resumably (embedding, features)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.db.models import QuerySet

from retrieval.models import Image


@dataclass
class KeysetWalk:
    """Batches of `images` (ordered by id) after `after_id`, at most `limit` images in all (None:
    every one), `batch_size` at a time; `stop()` is asked before each batch.

    Once iterated, `finished` says the walk reached the last image; otherwise `next_after` is the
    id to go on after (a limit or a stop). Batches are read as the loop asks for them, so the work
    done on a batch (rows it inserts) may change what the query matches next.
    """

    images: QuerySet[Image]
    after_id: int = 0
    limit: int | None = None
    batch_size: int = 256
    stop: Callable[[], bool] | None = None
    next_after: int | None = None
    finished: bool = False

    def __iter__(self) -> Iterator[list[Image]]:
        cursor, budget = self.after_id, self.limit
        while budget is None or budget > 0:
            if self.stop is not None and self.stop():
                self.next_after = cursor
                return
            take = self.batch_size if budget is None else min(self.batch_size, budget)
            batch = list(self.images.filter(pk__gt=cursor)[:take])
            if not batch:
                break
            yield batch
            cursor = batch[-1].pk
            if budget is not None:
                budget -= len(batch)
            if len(batch) < take:
                break
        else:
            self.next_after = cursor
            return
        self.finished = True
