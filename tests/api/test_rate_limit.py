"""Per-key rate limits through the official openai package: a 429 in the error envelope with Retry-After,
and each key counted on its own."""

import openai
import pytest

from service.settings import get_service_settings
from tests.service_helpers import tenant_client


def test_a_key_over_its_rate_gets_a_429_with_retry_after(service, monkeypatch):
    monkeypatch.setenv("VACCINE_RATE_LIMIT", "3/minute")
    get_service_settings.cache_clear()
    client, other = tenant_client(service, "acme"), tenant_client(service, "globex")
    for _ in range(3):
        client.files.list()
    with pytest.raises(openai.RateLimitError) as error:
        client.files.list()
    assert error.value.body["code"] == "rate_limit_exceeded" and "3/minute" in error.value.body["message"]
    assert 1 <= int(error.value.response.headers["Retry-After"]) <= 60
    assert error.value.response.headers["x-request-id"]
    assert list(other.files.list()) == []  # another key is counted on its own
    assert service.get("/healthz").status_code == 200  # probes carry no key and are not counted
