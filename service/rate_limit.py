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


def _seconds_over(who: str, limit: str, storage_uri: str, *, count: bool) -> int | None:
    """None while ``who`` is within ``limit`` (counting this one when ``count``), else the whole seconds
    until the window lets it in again. An empty ``limit`` limits nothing; a store that does not answer
    lets everyone through (logged): a limiter that is down must not take the API down with it."""
    if not limit:
        return None
    try:
        strategy = limiter(storage_uri)
        if strategy.hit(rule(limit), who) if count else strategy.test(rule(limit), who):
            return None
        reset = strategy.get_window_stats(rule(limit), who).reset_time
    except Exception as exc:  # the store's own errors differ per backend (redis, memcached, ...)
        log.warning("limit %s not applied: its store %s does not answer (%s)", limit, storage_uri, exc)
        return None
    return max(1, math.ceil(reset - time.time()))


def seconds_to_wait(key_hash: str, limit: str, storage_uri: str) -> int | None:
    """Count one request of the key whose digest is ``key_hash``; None when it is within ``limit``, else
    the seconds to wait."""
    return _seconds_over(key_hash, limit, storage_uri, count=True)


def blocked_for(who: str, limit: str, storage_uri: str) -> int | None:
    """The seconds until ``who`` may try again when its failures already fill ``limit``, else None
    (nothing is counted here: ``count_failure`` counts)."""
    return _seconds_over(who, limit, storage_uri, count=False)


def count_failure(who: str, limit: str, storage_uri: str) -> None:
    if not limit:
        return
    try:
        limiter(storage_uri).hit(rule(limit), who)
    except Exception as exc:
        log.warning("failed attempt not counted: the store %s does not answer (%s)", storage_uri, exc)
