"""The per-key rate limit's count: shared through Redis by several API processes, and never the cause of
an outage when its store is away."""

import uuid

from service import rate_limit
from tests.service_helpers import REDIS_URL, redis_or_skip


def test_api_processes_share_one_count_through_redis():
    redis_or_skip()
    # keys of this run's own, not a flushed database: other tests' brokers may share that database
    key_a, key_b = (f"key-{uuid.uuid4().hex}" for _ in range(2))
    first = [rate_limit.seconds_to_wait(key_a, "3/minute", REDIS_URL) for _ in range(2)]
    rate_limit.limiter.cache_clear()  # another API process: a limiter of its own over the same store
    second = [rate_limit.seconds_to_wait(key_a, "3/minute", REDIS_URL) for _ in range(2)]
    assert first == [None, None] and second[0] is None
    assert 1 <= second[1] <= 60  # the fourth request within the minute waits for the window
    assert rate_limit.seconds_to_wait(key_b, "3/minute", REDIS_URL) is None  # each key its own count


def test_a_store_that_does_not_answer_lets_requests_through(caplog):
    away = "redis://127.0.0.1:1/0"  # nothing listens there
    assert all(rate_limit.seconds_to_wait("key", "1/minute", away) is None for _ in range(3))
    assert "does not answer" in caplog.text


def test_an_empty_limit_counts_nothing():
    assert all(rate_limit.seconds_to_wait("key", "", "memory://") is None for _ in range(100))
