"""The operator console over HTTP: only the operator's key signs in, every page is escaped and sent with
a strict Content-Security-Policy, state-changing forms need the session's token, and a quarantine
decision goes through the admin route's own function (audit log)."""

import re

import pytest
from markupsafe import escape

from service.settings import get_service_settings
from tests.service_helpers import OPERATOR, sign_in, tenant_client, token, upload
from worker.runner import run_job

MARKUP = '<script>alert("x")</script>'


def test_only_the_operator_key_opens_the_console(service):
    assert service.get("/console", follow_redirects=False).headers["location"] == "/console/login"
    tenant = tenant_client(service, "acme")
    refused = sign_in(service, tenant.api_key)
    assert refused.status_code == 403 and "not the operator key" in refused.text
    assert service.get("/console", follow_redirects=False).status_code == 303  # still signed out
    signed_in = sign_in(service)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console"
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = service.get("/console")
    assert page.status_code == 200 and "Fine-tuning jobs" in page.text
    policy = page.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy and "default-src 'none'" in policy and "'unsafe-inline'" not in policy
    )
    logout = service.post("/console/logout", data={"csrf": token(page.text)}, follow_redirects=False)
    assert logout.status_code == 303 and service.get("/console", follow_redirects=False).status_code == 303


def test_a_form_without_the_session_s_token_or_from_another_origin_is_refused(service):
    assert sign_in(service).status_code == 303
    page = service.get("/console")
    assert service.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    assert service.post("/console/logout", data={"csrf": "forgé ✓"}).status_code == 403  # not a 500
    elsewhere = {"Origin": "https://evil.example"}
    assert (
        service.post("/console/logout", data={"csrf": token(page.text)}, headers=elsewhere).status_code == 403
    )
    assert service.get("/console").status_code == 200  # neither signed the operator out


def test_user_strings_show_as_text_and_a_quarantined_model_is_released_with_a_reason(
    service, base, monkeypatch
):
    monkeypatch.setenv("VACCINE_HARMFUL_SCORE_THRESHOLD", "0")  # every model is held back
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), suffix=MARKUP, metadata={"note": MARKUP}
    )
    assert run_job(job.id) == "failed"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert sign_in(service).status_code == 303

    for page in ("/console", f"/console/jobs/{job.id}", f"/console/models/{model_id}", "/console/quarantine"):
        shown = service.get(page).text
        assert MARKUP not in shown and "&lt;script&gt;" in shown, page  # the suffix, as text
    loss = service.get(f"/console/charts/loss.svg?job={job.id}")
    assert loss.headers["content-type"].startswith("image/svg+xml") and "<polyline" in loss.text
    report = service.get(f"/console/models/{model_id}")
    assert report.status_code == 200 and "moderation_blocked" in report.text
    for chart in ("harmful", "buckets", "over_refusal", "categories"):
        drawn = service.get(f"/console/charts/{chart}.svg", params={"model": model_id})
        assert drawn.status_code == 200 and drawn.text.startswith("<svg"), chart
    assert "threshold 0.0 %" in service.get("/console/charts/harmful.svg", params={"model": model_id}).text

    queue = service.get("/console/quarantine")
    assert str(escape(model_id)) in queue.text
    form = {"csrf": token(queue.text), "model_id": model_id, "action": "release", "reason": ""}
    assert service.post("/console/quarantine/decide", data=form).status_code == 400  # a reason is needed
    decided = service.post("/console/quarantine/decide", data={**form, "reason": "reviewed by hand"})
    assert decided.status_code == 200 and "Done: release" in decided.text
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    audit = service.get("/admin/audit", headers=OPERATOR).json()["data"]
    assert any(entry["action"] == "model.release" and entry["target"] == model_id for entry in audit)


PAGES = ["/console", "/console/quarantine", "/console/workers", "/console/jobs/ftjob-x", "/console/bases",
         "/console/tenants", "/console/policy", "/console/playground"]  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_every_page_needs_the_session(service, page):
    assert service.get(page, follow_redirects=False).headers["location"] == "/console/login"


def test_bases_tenants_and_policy_are_managed_through_the_admin_functions(service, tiny_model_dir):
    assert sign_in(service).status_code == 303
    page = service.get("/console/bases")
    form = {"csrf": token(page.text), "name": "tiny-sft", "source": str(tiny_model_dir), "method": "sft"}
    assert service.post("/console/bases", data={**form, "name": "bad name!"}).status_code == 400
    assert service.post("/console/bases", data=form).status_code == 200  # redirected to the list
    assert service.alignments == ["tiny-sft"]  # its alignment was queued for a worker
    assert "tiny-sft" in service.get("/console/bases").text
    assert service.post("/console/bases", data=form).status_code == 409  # the name is taken

    created = service.post("/console/tenants", data={"csrf": form["csrf"], "name": "globex"})
    key = re.search(r'id="new-key">(vk-[^<]+)<', created.text).group(1)  # shown this once
    assert key not in service.get("/console/tenants").text
    tenants = service.get("/admin/tenants", headers=OPERATOR).json()["data"]
    (globex,) = [t for t in tenants if t["name"] == "globex"]
    quotas = {"csrf": form["csrf"], "max_concurrent_jobs": "5", "max_storage_gib": "2"}
    assert service.post(f"/console/tenants/{globex['id']}/quotas", data=quotas).status_code == 200
    tenants = service.get("/admin/tenants", headers=OPERATOR).json()["data"]
    (globex,) = [t for t in tenants if t["name"] == "globex"]
    assert globex["max_concurrent_jobs"] == 5 and globex["max_storage_bytes"] == 2 << 30

    policy = {"csrf": form["csrf"], "harmful_score_threshold": "30", "prescreen_action": "reject"}
    assert (
        service.post("/console/policy", data={**policy, "harmful_score_threshold": "300"}).status_code == 400
    )
    assert service.post("/console/policy", data=policy).status_code == 200
    saved = service.get("/admin/policy", headers=OPERATOR).json()
    assert saved["harmful_score_threshold"] == 30 and saved["prescreen_action"] == "reject"
    actions = [entry["action"] for entry in service.get("/admin/audit", headers=OPERATOR).json()["data"]]
    assert {"base.register", "tenant.create", "policy.update"} <= set(actions)

    page = service.get("/console/policy").text
    assert 'name="lisa"' in page and 'name="safe_lora_threshold"' in page  # every option of the stack
    stack = {"csrf": form["csrf"], "lisa": "on", "lisa_rho": "2", "safe_lora_threshold": "0.4"}
    refused = service.post("/console/policy/defenses", data={**stack, "lisa_rho": "-1"})
    assert refused.status_code == 400 and "lisa_rho" in refused.text
    assert service.post("/console/policy/defenses", data={**stack, "csrf": "forged"}).status_code == 403
    assert service.post("/console/policy/defenses", data=stack).status_code == 200
    saved = service.get("/admin/policy", headers=OPERATOR).json()["defenses"]
    assert saved["lisa"] and not saved["safe_lora"] and saved["lisa_rho"] == 2
    assert (
        saved["safe_lora_threshold"] == 0.4 and 'name="lisa" checked' in service.get("/console/policy").text
    )


def test_the_playground_answers_with_any_model_and_needs_the_page_s_token(service, base):
    assert sign_in(service).status_code == 303
    page = service.get("/console/playground")
    assert f'<option value="{base}">' in page.text
    body = {"model": base, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    assert service.post("/console/api/chat", json=body).status_code == 403  # no token: not the page's
    answer = service.post("/console/api/chat", json=body, headers={"X-CSRF-Token": token(page.text)})
    assert answer.status_code == 200 and isinstance(answer.json()["content"], str)
    missing = service.post(
        "/console/api/chat", json={**body, "model": "nothing"}, headers={"X-CSRF-Token": token(page.text)}
    )
    assert missing.status_code == 404
