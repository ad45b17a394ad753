"""Per-key rate limits through the official openai package: a 429 in the error envelope with Retry-After,
and each key counted on its own; wrong operator keys lock their address out of /admin and the console."""

import openai
import pytest

from service.settings import get_service_settings
from tests.service_helpers import OPERATOR, sign_in, tenant_client


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


def test_wrong_operator_keys_lock_their_address_out_for_a_while(service, monkeypatch):
    monkeypatch.setenv("VACCINE_OPERATOR_KEY_FAILURES", "3/minute")
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    wrong = [
        service.get("/admin/tenants", headers={"Authorization": "Bearer guess-1"}),
        service.get("/admin/tenants", headers={"Authorization": f"Bearer {client.api_key}"}),
        sign_in(service, "guess-2"),
    ]
    assert [answer.status_code for answer in wrong] == [403, 403, 403]
    # now even the right key is refused from this address until the window passes, on both doors
    locked = service.get("/admin/tenants", headers=OPERATOR)
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "too_many_failed_attempts"
    assert 1 <= int(locked.headers["Retry-After"]) <= 60
    page = sign_in(service, "operator-secret")
    assert page.status_code == 429 and "Too many wrong keys" in page.text and page.headers["Retry-After"]
    assert list(client.files.list()) == []  # tenants' own routes are not locked
