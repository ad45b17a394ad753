"""Schemathesis over every operation of the service's OpenAPI description, with valid keys (a tenant's
on /v1, the operator's on /admin): whatever the generated path, query and body, no answer may be a server
error. Runs in process against a fresh SQLite database and a tiny tenant; the test suite runs a few cases
a route (tests/api/test_fuzz.py), this script many.

    .venv/bin/python benchmarks/fuzz_api.py [--cases 100]

Writes benchmarks/results/fuzz.json: cases and server errors in all and per route (none, to pass).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

OPERATOR_KEY = "operator-secret"


def fuzz(app: Any, tenant_key: str, cases_per_route: int) -> tuple[Counter, list[str]]:
    """Generated cases against each operation: the count by operation, and every server error met (each
    named by its operation first)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: Counter = Counter()
    errors: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        check_operation(operation, tenant_key, cases_per_route, counts, errors)
    return counts, errors


def check_operation(operation: Any, tenant_key: str, cases: int, counts: Counter, errors: list[str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    tenant = {"Authorization": f"Bearer {tenant_key}"}
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}

    @settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(headers=operator if case.path.startswith("/admin") else tenant)
        counts[label] += 1
        if response.status_code >= 500:
            errors.append(f"{label} -> {response.status_code}: {case.formatted_path} {response.text[:300]}")

    check()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=100, help="generated cases per route")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fuzz-"))
    os.environ.update(
        VACCINE_HOME=str(home),
        VACCINE_DATABASE_URL=f"sqlite:///{home / 'fuzz.db'}",
        VACCINE_ADMIN_KEY=OPERATOR_KEY,
        VACCINE_PRESCREEN_JUDGE="refusal",
        VACCINE_RATE_LIMIT="",  # thousands of cases with one key: a 429 would hide the routes' answers
    )
    sys.path.insert(0, str(Path(__file__).parent))
    from common import RESULTS, machine_info, provenance, write_result
    from sqlalchemy.orm import Session

    from api.cli import migrate
    from api.main import create_app
    from service.db import get_engine
    from service.tenants import create_tenant

    migrate()
    with Session(get_engine()) as session:
        _tenant, key = create_tenant(session, "fuzz")
    started = time.monotonic()
    counts, errors = fuzz(create_app(), key, args.cases)
    result = {
        "cases_per_route": args.cases,
        "cases": sum(counts.values()),
        "server_errors": len(errors),
        "routes": {
            label: {"cases": cases, "server_errors": sum(e.startswith(f"{label} -> ") for e in errors)}
            for label, cases in sorted(counts.items())
        },
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        **provenance(__file__),
    }
    out = RESULTS / "fuzz.json"
    write_result(out, result)
    shown = ("cases", "server_errors", "errors", "seconds")
    print(json.dumps({"routes": len(counts), **{k: result[k] for k in shown}}, indent=2))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
