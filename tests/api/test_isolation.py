"""Tenant isolation, generated from the route table: every tenant route that takes an id answers 404 for
another tenant's object (exactly as for a missing one), every operator route refuses a tenant key (403),
and every route but the probes refuses a request without a key (401). A new route joins the matrix by
existing; a route this file does not know how to fill fails the test until it does."""

import re

import pytest
from sqlalchemy.orm import Session

from service.db import get_engine
from service.models import FineTunedModel
from service.settings import get_service_settings
from tests.service_helpers import tenant_client, upload

PUBLIC = {"/healthz", "/readyz"}
PARAM = re.compile(r"{(\w+)}")


def routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the application serves, from its OpenAPI description (the probes are left out
    of it, and are public)."""
    return sorted(
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    )


def fill(path: str, ids: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in ids:
            pytest.fail(f"no value for '{name}' in {path}: add it to the isolation matrix")
        return ids[name]

    return PARAM.sub(value, path)


@pytest.fixture
def owned(service, base, tmp_path):
    """Tenant A's file, job and fine-tuned model; tenant B's key."""
    owner = tenant_client(service, "acme")
    file_id = upload(owner)
    job = owner.fine_tuning.jobs.create(model=base, training_file=file_id)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    model_id = f"ft:{base}:custom:{job.id}"
    with Session(get_engine()) as session:
        session.add(
            FineTunedModel(
                id=model_id, tenant_id=job.organization_id, job_id=job.id, base_model=base,
                path=str(adapter), safety_report={}, quarantined=False,
            )
        )  # fmt: skip
        session.commit()
    step = get_service_settings().home / "jobs" / job.id / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    (step / "adapter_model.safetensors").write_bytes(b"")
    intruder = tenant_client(service, "globex")
    ids = {
        "checkpoint": f"{model_id}:ckpt-step-000001",
        "permission_id": "cp_x",
        "file_id": file_id,
        "job_id": job.id,
        "model_id": model_id,
        "tenant_id": job.organization_id,
        "key_id": "key-x",
    }
    return ids, {"Authorization": f"Bearer {intruder.api_key}"}, owner


def test_another_tenants_ids_answer_404_on_every_tenant_route(service, owned):
    ids, intruder, owner = owned
    tried = []
    for method, path in routes(service.app):
        if not path.startswith("/v1") or "{" not in path:
            continue
        answer = service.request(method, fill(path, ids), headers=intruder, json={})
        assert answer.status_code == 404, f"{method} {path}: {answer.status_code} {answer.text[:200]}"
        assert answer.json()["error"]["code"] == "not_found"
        tried.append(f"{method} {path}")
    assert len(tried) >= 12, tried  # files, jobs (events, checkpoints, cancel, pause, resume), models
    # and the owner still has everything
    assert owner.files.retrieve(ids["file_id"]).id == ids["file_id"]
    assert owner.fine_tuning.jobs.retrieve(ids["job_id"]).status == "queued"


def test_operator_routes_refuse_tenant_keys_and_every_route_refuses_no_key(service, owned, monkeypatch):
    monkeypatch.setenv("VACCINE_OPERATOR_KEY_FAILURES", "")  # here every refusal is a 403, not a lockout
    get_service_settings.cache_clear()
    ids, intruder, _owner = owned
    operator_routes = 0
    for method, path in routes(service.app):
        if path in PUBLIC:
            continue
        url = fill(path, ids)
        anonymous = service.request(method, url, json={})
        assert anonymous.status_code == 401, f"{method} {path} without a key: {anonymous.status_code}"
        if path.startswith("/admin"):
            refused = service.request(method, url, headers=intruder, json={})
            assert refused.status_code == 403, f"{method} {path} with a tenant key: {refused.status_code}"
            operator_routes += 1
    assert operator_routes >= 15
