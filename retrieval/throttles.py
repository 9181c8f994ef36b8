"""Rate limits counted in the shared cache (the platform's Redis), so they hold across web
processes. A limit that cannot reach Redis lets the request through: losing a rate limit for a
moment is better than refusing everything with a 500."""

from __future__ import annotations

import logging
from typing import Any

import redis
from rest_framework.throttling import UserRateThrottle

log = logging.getLogger(__name__)


class SharedRateThrottle(UserRateThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return self.allow_many(request, 1, view)

    def allow_many(self, request: Any, count: int, view: Any = None) -> bool:
        """DRF's allow_request for `count` requests at once (one-to-many marks count each
        image): all are allowed and counted, or none."""
        try:
            limit, duration = self.parse_rate(self.rate)
            if limit is None or duration is None:
                return True
            self.key = self.get_cache_key(request, view)
            if self.key is None:
                return True
            self.history = self.cache.get(self.key, [])
            self.now = self.timer()
            while self.history and self.history[-1] <= self.now - duration:
                self.history.pop()
            if len(self.history) + count > limit:
                return self.throttle_failure()
            self.history[:0] = [self.now] * count
            self.cache.set(self.key, self.history, duration)
            return True
        except (redis.RedisError, OSError):
            log.warning("%s throttle skipped: the cache (Redis) cannot be reached", self.scope)
            return True


class SearchUploadThrottle(SharedRateThrottle):
    """AUTORET_SEARCHES_BY_IMAGE_PER_MINUTE searches by uploaded image per user (each decodes
    and embeds an image in the web process), on the page and through the API together."""

    scope = "search_uploads"


def upload_search_wait(request: Any) -> float | None:
    """None when the user may search by an uploaded image now, else the seconds to wait. Takes a
    Django HttpRequest (the page) or a DRF Request (the API)."""
    throttle = SearchUploadThrottle()
    if throttle.allow_request(request, None):
        return None
    return throttle.wait() or 1.0
