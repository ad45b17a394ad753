"""Requests per API key, and failed operator-key attempts per client address, in a moving window counted
by the `limits` library: in the API process's memory (``memory://``, one API process) or in Redis (a
``redis://`` URL, shared by every API process)."""

import logging
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse, storage
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def limiter(storage_uri: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage.storage_from_string(storage_uri))


@lru_cache(maxsize=16)
def rule(limit: str) -> RateLimitItem:
    return parse(limit)  # "600/minute", "10/second", ...


def seconds_to_wait(key_hash: str, limit: str, storage_uri: str) -> int | None:
    """Count one request of the key whose digest is ``key_hash``; None when it is within ``limit``, else
    the whole seconds until the window lets it in again. An empty ``limit`` counts nothing. A store that
    does not answer lets the request through (logged): a rate limiter that is down must not take the API
    down with it."""
    if not limit:
        return None
    try:
        if limiter(storage_uri).hit(rule(limit), key_hash):
            return None
        reset = limiter(storage_uri).get_window_stats(rule(limit), key_hash).reset_time
    except Exception as exc:  # the store's own errors differ per backend (redis, memcached, ...)
        log.warning("rate limit not applied: its store %s does not answer (%s)", storage_uri, exc)
        return None
    return max(1, math.ceil(reset - time.time()))


def blocked_for(who: str, limit: str, storage_uri: str) -> int | None:
    """Whole seconds until ``who`` may try again when its failures already fill ``limit``, else None
    (nothing is counted here: ``count_failure`` counts). The store failing lets the attempt through."""
    if not limit:
        return None
    try:
        if limiter(storage_uri).test(rule(limit), who):
            return None
        reset = limiter(storage_uri).get_window_stats(rule(limit), who).reset_time
    except Exception as exc:
        log.warning("failed attempts not limited: the store %s does not answer (%s)", storage_uri, exc)
        return None
    return max(1, math.ceil(reset - time.time()))


def count_failure(who: str, limit: str, storage_uri: str) -> None:
    if not limit:
        return
    try:
        limiter(storage_uri).hit(rule(limit), who)
    except Exception as exc:
        log.warning("failed attempt not counted: the store %s does not answer (%s)", storage_uri, exc)
