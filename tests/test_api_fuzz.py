"""A few generated cases a route over the whole OpenAPI description (benchmarks/fuzz_api.py runs many):
with valid keys, no answer is ever a server error."""

import sys
from pathlib import Path

from test_api import service, tenant_client  # noqa: F401  (the fixture)

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from fuzz_api import fuzz

CASES_PER_ROUTE = 2


def test_no_route_answers_a_server_error(service):  # noqa: F811
    client = tenant_client(service, "acme")
    counts, errors = fuzz(service.app, client.api_key, CASES_PER_ROUTE)
    assert errors == []
    assert len(counts) >= 30 and min(counts.values()) >= 1
