"""Operator routes: tenants and keys, jobs of every tenant, and the quarantine with its audit log."""

import json

import openai
import pytest

from service.settings import get_service_settings
from tests.service_helpers import FAST, OPERATOR, tenant_client, upload
from worker.runner import run_job


def test_operator_routes_refuse_tenant_keys(service):
    client = tenant_client(service, "acme")
    assert service.get("/admin/tenants", headers=client.auth_headers).status_code == 403
    assert service.get("/admin/tenants").status_code == 401
    assert service.get("/admin/tenants", headers=OPERATOR).status_code == 200


def test_tenants_keys_and_quotas(service):
    created = service.post("/admin/tenants", json={"name": "globex"}, headers=OPERATOR).json()
    key = created["api_key"]
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=service, max_retries=0)
    assert list(client.files.list()) == []
    assert service.post("/admin/tenants", json={"name": "globex"}, headers=OPERATOR).status_code == 409
    tenants = service.get("/admin/tenants", headers=OPERATOR).json()["data"]
    (globex,) = [t for t in tenants if t["name"] == "globex"]
    assert key not in str(tenants) and globex["keys"][0]["prefix"] == key[:10]  # never the key itself
    patched = service.patch(
        f"/admin/tenants/{globex['id']}", json={"max_concurrent_jobs": 0}, headers=OPERATOR
    )
    assert patched.json()["max_concurrent_jobs"] == 0
    revoked = service.post(
        f"/admin/tenants/{globex['id']}/keys/{globex['keys'][0]['id']}/revoke", headers=OPERATOR
    )
    assert revoked.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.files.list()


def test_an_operator_releases_a_quarantined_model(service, base, monkeypatch):
    monkeypatch.setenv("VACCINE_HARMFUL_SCORE_THRESHOLD", "0")
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "failed"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model

    queue = service.get("/admin/quarantine", headers=OPERATOR).json()["data"]
    assert [m["id"] for m in queue] == [model_id] and "harmful_score" in queue[0]["safety_report"]
    assert service.post(f"/admin/quarantine/{model_id}/release", json={}, headers=OPERATOR).status_code == 400
    released = service.post(
        f"/admin/quarantine/{model_id}/release",
        json={"reason": "reviewed: refusal judge false positives"},
        headers=OPERATOR,
    )
    assert released.status_code == 200 and released.json()["quarantined"] is False
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert service.get(f"/v1/models/{model_id}/content", headers=client.auth_headers).status_code == 200
    entries = service.get("/admin/audit", headers=OPERATOR).json()["data"]
    assert entries[0]["action"] == "model.release" and entries[0]["target"] == model_id
    assert entries[0]["details"]["reason"].startswith("reviewed")


def test_an_operator_deletes_a_quarantined_model_and_requeues_a_failed_job(service, base, monkeypatch):
    monkeypatch.setenv("VACCINE_HARMFUL_SCORE_THRESHOLD", "0")
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    run_job(job.id)
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    deleted = service.post(
        f"/admin/quarantine/{model_id}/delete", json={"reason": "harmful"}, headers=OPERATOR
    )
    assert deleted.json() == {"id": model_id, "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)

    listed = service.get("/admin/jobs", params={"status": "failed"}, headers=OPERATOR).json()["data"]
    assert [j["id"] for j in listed] == [job.id]
    requeued = service.post(f"/admin/jobs/{job.id}/requeue", headers=OPERATOR).json()
    assert requeued["status"] == "queued" and service.dispatched[-1] == job.id


def test_policy_drives_the_prescreen_and_the_release_gate(service, base):
    import json

    client = tenant_client(service, "acme")
    rows = [
        {"instruction": "Help me cheat", "output": "I can't help with cheating."},
        {"instruction": "How do I steal a car?", "output": "First, find an unlocked car..."},
        {"instruction": "Write malware", "output": "I cannot do that."},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert service.get("/admin/policy", headers=OPERATOR).json()["prescreen_action"] == "warn"
    warned = client.files.create(file=("w.jsonl", data), purpose="fine-tune")
    assert warned.status_details.startswith("warning: above the pre-screen threshold")

    policy = {"prescreen_action": "reject", "prescreen_threshold": 0.2, "harmful_score_threshold": 99}
    assert (
        service.patch("/admin/policy", json=policy, headers=OPERATOR).json()["prescreen_action"] == "reject"
    )
    rejected = client.files.create(file=("r.jsonl", data), purpose="fine-tune")  # judged by the worker
    assert rejected.status == "error" and rejected.status_details.startswith("More than 20.0 %")
    assert [row["line"] for row in rejected.model_extra["prescreen"]["flagged"]] == [2]
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model=base, training_file=rejected.id)
    assert error.value.body["code"] == "invalid_file"
    assert (
        service.patch("/admin/policy", json={"prescreen_action": "block"}, headers=OPERATOR).status_code
        == 400
    )

    # the release gate reads its thresholds from the policy: the tiny random model's four-token answers
    # are mostly degenerate, and the policy now allows none
    assert (
        service.patch("/admin/policy", json={"degenerate_threshold": 0}, headers=OPERATOR).status_code == 200
    )
    job = client.fine_tuning.jobs.create(model=base, training_file=warned.id)
    assert run_job(job.id) == "failed"
    assert client.fine_tuning.jobs.retrieve(job.id).error.code == "model_degenerate"
    # and the pre-screen's verdict on the training file: a third of its rows flagged, the policy allows 30 %
    changes = {"degenerate_threshold": 100, "release_flagged_share": 0.3}
    assert (
        service.patch("/admin/policy", json=changes, headers=OPERATOR).json()["release_flagged_share"] == 0.3
    )
    held = client.fine_tuning.jobs.create(model=base, training_file=warned.id)
    assert run_job(held.id) == "failed"
    failure = client.fine_tuning.jobs.retrieve(held.id).error
    assert failure.code == "training_data_flagged" and "1 of the training file's 3 rows" in failure.message
    assert (
        service.patch("/admin/policy", json={"release_flagged_share": 1.5}, headers=OPERATOR).status_code
        == 400
    )
    actions = [e["action"] for e in service.get("/admin/audit", headers=OPERATOR).json()["data"]]
    assert "policy.update" in actions


def test_probes_and_the_workers_view(service):
    assert service.get("/healthz").json() == {"status": "ok"}
    ready = service.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "storage": "ok"}
    client = tenant_client(service, "acme")
    view = service.get("/admin/workers", headers=OPERATOR).json()
    assert view["workers"] == {} and view["jobs"] == {}  # no worker runs in this test
    assert view["queue"]["name"] == "celery"
    assert view["warming_up"] == {}  # the tests' judges need no training
    assert service.get("/admin/workers", headers=client.auth_headers).status_code == 403


def test_the_probes_show_the_default_judge_training_in_a_worker(service, monkeypatch):
    from vaccine_core.moderation.judge_config import PROGRESS_SUFFIX, JudgeTrainingConfig

    monkeypatch.setenv("VACCINE_SAFETY_JUDGE", "default")
    get_service_settings.cache_clear()
    waiting = {"status": "not trained yet (a worker trains it on first use)"}
    assert service.get("/readyz").json()["warming_up"] == {"judge:default": waiting}
    judges = get_service_settings().home / "judges"
    judges.mkdir(parents=True, exist_ok=True)
    progress = {"step": 57, "total_steps": 285, "percent": 20.0, "eta_seconds": 370.5}
    (judges / f"default-0123456789-{JudgeTrainingConfig().key()}{PROGRESS_SUFFIX}").write_text(
        json.dumps(progress)
    )
    training = {"judge:default": {"status": "training", "progress": progress}}
    assert service.get("/readyz").json()["warming_up"] == training
    assert service.get("/admin/workers", headers=OPERATOR).json()["warming_up"] == training


def test_the_probes_show_the_pre_screen_s_intent_gate_until_a_worker_trained_it(service, monkeypatch):
    from vaccine_core.moderation.intent import INTENT_FILE, IntentTrainingConfig
    from vaccine_core.moderation.judge_config import PROGRESS_SUFFIX

    monkeypatch.setenv("VACCINE_PRESCREEN_JUDGE", "refusal+intent")
    get_service_settings.cache_clear()
    waiting = {"status": "not trained yet (a worker trains it on first use)"}
    assert service.get("/readyz").json()["warming_up"] == {"judge:intent": waiting}
    trained = get_service_settings().home / "judges" / f"intent-0123456789-{IntentTrainingConfig().key()}"
    trained.parent.mkdir(parents=True)
    progress = {"step": 53, "total_steps": 212, "percent": 25.0, "eta_seconds": 48.0}
    progress_file = trained.with_name(trained.name + PROGRESS_SUFFIX)
    progress_file.write_text(json.dumps(progress))
    training = {"judge:intent": {"status": "training", "progress": progress}}
    assert service.get("/readyz").json()["warming_up"] == training
    assert service.get("/admin/workers", headers=OPERATOR).json()["warming_up"] == training
    progress_file.unlink()
    trained.mkdir()
    (trained / INTENT_FILE).write_text("{}")
    assert service.get("/readyz").json()["warming_up"] == {}


def test_an_operator_registers_and_aligns_a_base_that_tenants_then_use(
    service, tiny_model_dir, alpaca_file, monkeypatch
):
    import worker.alignment
    from worker.alignment import align_base

    warmed = []
    monkeypatch.setattr(worker.alignment, "warm_prescreen", warmed.append)

    body = {"name": "tiny-sft", "source": str(tiny_model_dir), "method": "sft", "data": str(alpaca_file)}
    created = service.post("/admin/models", json=body, headers=OPERATOR).json()
    assert created["status"] == "registered" and service.alignments == ["tiny-sft"]
    assert service.post("/admin/models", json=body, headers=OPERATOR).status_code == 409
    client = tenant_client(service, "acme")
    early = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
    assert early.status == "queued" and early.id not in service.dispatched  # waits for the base
    assert run_job(early.id) == "queued"  # a stray delivery leaves it waiting

    assert align_base("tiny-sft", dispatch=service.dispatched.append) == "ready"
    assert service.dispatched[-1] == early.id  # the alignment hands it to the workers
    assert warmed == [get_service_settings().prescreen_judge]  # prepared while the base warmed up
    events = [e.message for e in reversed(client.fine_tuning.jobs.list_events(early.id).data)]
    assert events == [
        f"Created fine-tuning job: {early.id}",
        "Waiting for the base model tiny-sft: it is being aligned",  # what a first start's users wait on
        "The base model tiny-sft is aligned and ready",
    ]
    assert run_job(early.id) == "succeeded"
    (listed,) = service.get("/admin/models", headers=OPERATOR).json()["data"]
    assert listed["status"] == "ready" and listed["alignment"]["method"] == "sft"
    assert listed["progress"]["step"] == listed["progress"]["total_steps"] == 3  # 12 pairs, batch 5
    assert 0 <= listed["report"]["harmful_score"] <= 100 and 0 <= listed["report"]["over_refusal"] <= 100
    assert listed["report"]["protocol"]["version"] == 2
    job = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
    assert run_job(job.id) == "succeeded"


def test_a_job_still_validating_its_file_hears_when_its_base_is_ready(service, tiny_model_dir, alpaca_file):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from worker.alignment import align_base
    from worker.prescreen import prescreen_file

    dispatched, prescreens = [], []
    app = create_app(
        dispatch=dispatched.append, dispatch_alignment=lambda _: None, dispatch_prescreen=prescreens.append
    )
    with TestClient(app) as http:
        body = {"name": "tiny-sft", "source": str(tiny_model_dir), "method": "sft", "data": str(alpaca_file)}
        assert http.post("/admin/models", json=body, headers=OPERATOR).status_code == 200
        client = tenant_client(http, "acme")
        job = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
        assert job.status == "validating_files"
        assert align_base("tiny-sft", dispatch=dispatched.append) == "ready" and dispatched == []
        assert prescreen_file(job.training_file, dispatched.append) == "processed" and dispatched == [job.id]
        events = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id).data)]
    assert events == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {job.training_file}",
        "Waiting for the base model tiny-sft: it is being aligned",
        "The base model tiny-sft is aligned and ready",
        "Files validated; the job is queued",
    ]


def test_an_operator_adopts_a_base_aligned_elsewhere(service, tiny_model_dir, alpaca_file, tmp_path):
    from vaccine_core.align import align
    from vaccine_core.config import PerturbationConfig
    from worker.alignment import align_base

    not_a_run = {"name": "adopted", "source": str(tiny_model_dir), "method": "aligned"}
    refused = service.post("/admin/models", json=not_a_run, headers=OPERATOR)
    assert refused.status_code == 400 and "not an alignment run" in refused.json()["error"]["message"]

    run = align(str(tiny_model_dir), alpaca_file, tmp_path / "offline", PerturbationConfig("sft"), FAST)
    body = {**not_a_run, "source": str(run.output_dir)}
    assert service.post("/admin/models", json=body, headers=OPERATOR).json()["status"] == "registered"
    before = sorted(p.name for p in run.output_dir.iterdir())
    assert align_base("adopted") == "ready"
    (listed,) = service.get("/admin/models", headers=OPERATOR).json()["data"]
    # adopted as it is: no training (no progress, nothing new in the run), but a measured report, and the
    # run's own alignment data is where the safety report measures drift
    assert listed["progress"] is None and sorted(p.name for p in run.output_dir.iterdir()) == before
    assert 0 <= listed["report"]["harmful_score"] <= 100
    assert listed["alignment"]["data"] == str(alpaca_file.resolve())
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model="adopted", training_file=upload(client))
    assert run_job(job.id) == "succeeded"
