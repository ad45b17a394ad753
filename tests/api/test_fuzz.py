"""A few generated cases a route over the whole OpenAPI description (benchmarks/fuzz_api.py runs many):
with valid keys, no answer is ever a server error."""

import sys
from pathlib import Path

from tests.service_helpers import tenant_client

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from fuzz_api import fuzz

CASES_PER_ROUTE = 2


def test_no_route_answers_a_server_error(service):
    client = tenant_client(service, "acme")
    counts, errors = fuzz(service.app, client.api_key, CASES_PER_ROUTE)
    assert errors == []
    assert len(counts) >= 30 and min(counts.values()) >= 1
