"""Fine-tuning jobs through the official openai package, run by the worker's job runner on a tiny model."""

import json

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.main import create_app
from service.db import get_engine
from service.models import BaseModelRecord, FineTunedModel, Job, Tenant
from service.settings import get_service_settings
from tests.service_helpers import JOB_ROWS, tenant_client, upload
from worker.runner import run_job


def test_a_job_runs_to_success_with_progress_events(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=upload(client),
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        suffix="demo",
    )
    assert job.status == "queued" and service.dispatched == [job.id]
    assert run_job(job.id) == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == f"ft:{base}:demo:{job.id}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(metrics)] == [1, 2, 3, 4]  # 8 rows / 4 per batch x 2 epochs
    assert all({"train_loss", "learning_rate", "percent", "eta_seconds"} <= set(e.data) for e in metrics)
    assert events[0].message == "The job has successfully completed"
    (result_file,) = done.result_files  # the step metrics, as OpenAI's fine-tune-results file
    assert client.files.retrieve(result_file).purpose == "fine-tune-results"
    rows = client.files.content(result_file).text.splitlines()
    assert rows[0] == "step,train_loss,valid_loss,learning_rate" and [r.split(",")[0] for r in rows[1:]] == [
        "1",
        "2",
        "3",
        "4",
    ]
    assert float(rows[-1].split(",")[1]) == pytest.approx(metrics[0].data["train_loss"])
    assert run_job(job.id) == "succeeded"  # idempotent: a redelivered task changes nothing
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]


def test_cancel_stops_a_queued_job_and_a_finished_one_cannot_be_cancelled(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert run_job(job.id) == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_running_job_stops_at_the_next_step_when_cancelled(service, base, monkeypatch):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"n_epochs": 3}
    )
    import worker.runner as runner

    real = runner.finetune

    def cancel_after_first_step(*args, on_progress, **kwargs):
        def progress(p):
            on_progress(p)
            if p.step == 1:
                client.fine_tuning.jobs.cancel(job.id)

        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(runner, "finetune", cancel_after_first_step)
    assert run_job(job.id) == "cancelled"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "cancelled" and done.progress["step"] == 1


def test_bad_job_requests_are_refused_with_the_field(service, base):
    client = tenant_client(service, "acme")
    other = tenant_client(service, "other")
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=upload(client))
    assert error.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model=base, training_file=upload(other))  # another tenant's file
    assert error.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(
            client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
        )


def test_a_failing_job_ends_failed_with_a_readable_error(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with Session(get_engine()) as session:
        session.get(BaseModelRecord, base).path = "/nonexistent"
        session.commit()
    assert run_job(job.id) == "failed"
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "training_failed" and failed.error.message
    with Session(get_engine()) as session:
        assert session.get(Job, job.id).finished_at is not None


def test_a_fine_tuned_model_comes_with_its_safety_report_and_downloads(service, base):
    import io
    import tarfile

    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client), suffix="safe")
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    model = client.models.retrieve(model_id)
    report = model.model_extra["safety_report"]
    # protocol v2: greedy and sampled answers, every one in a bucket, the gate's figures beside them
    protocol = report["protocol"]
    assert protocol["version"] == 2 and protocol["judge"] == "refusal"
    assert (protocol["harmful_prompts"], protocol["harmless_prompts"], protocol["borderline_prompts"]) == (
        3,
        3,
        2,
    )
    for decoding in ("greedy", "sampled"):
        harmful = report[decoding]["harmful"]
        assert harmful["answers"] == 3 and sum(harmful["buckets"].values()) == pytest.approx(100)
        assert harmful["hs"] == harmful["buckets"]["harmful"]
        assert report[decoding]["borderline"]["answers"] == 2
    assert report["harmful_score"] == max(report[d]["harmful"]["hs"] for d in ("greedy", "sampled"))
    assert report["over_refusal"] == report["greedy"]["harmless"]["over_refusal"]
    assert 0 <= report["degenerate_harmless"] <= 100 and report["gate"] is None
    assert report["embedding_drift"] is None or report["embedding_drift"] >= 0
    assert report["fine_tune"]["steps"] == 6 and report["passed"]
    assert {m.id for m in client.models.list()} == {base, model_id}

    archive = service.get(f"/v1/models/{model_id}/content", headers=client.auth_headers)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as bundle:
        names = bundle.getnames()
    assert {
        f"{job.id}/adapter_model.safetensors",
        f"{job.id}/manifest.json",
        f"{job.id}/safety_report.json",
    } <= set(names)
    assert not any("checkpoints" in n for n in names)


def test_a_download_is_checked_against_its_manifest_and_carries_its_digest(service, base):
    import base64
    import hashlib
    import io
    import json
    import tarfile

    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    archive = service.get(f"/v1/models/{model_id}/content", headers=client.auth_headers)
    digest = base64.b64encode(hashlib.sha256(archive.content).digest()).decode()
    assert archive.headers["Repr-Digest"] == f"sha-256=:{digest}:"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as bundle:
        manifest = json.load(bundle.extractfile(f"{job.id}/manifest.json"))
        for name, expected in manifest["files"].items():  # what a client can check after unpacking
            assert hashlib.sha256(bundle.extractfile(f"{job.id}/{name}").read()).hexdigest() == expected

    weights = get_service_settings().home / "jobs" / job.id / "adapter_model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF  # one bit-flipped byte on disk
    weights.write_bytes(bytes(damaged))
    refused = service.get(f"/v1/models/{model_id}/content", headers=client.auth_headers)
    assert refused.status_code == 500
    error = refused.json()["error"]
    assert error["code"] == "artifact_corrupted" and "adapter_model.safetensors" in error["message"]


def test_the_release_gate_quarantines_a_model_above_the_threshold(service, base, monkeypatch):
    from service.settings import get_service_settings

    monkeypatch.setenv("VACCINE_HARMFUL_SCORE_THRESHOLD", "0")  # the refusal judge flags every answer
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "failed"
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "moderation_blocked" and "quarantined" in failed.error.message
    model = client.models.retrieve(failed.fine_tuned_model)
    assert model.model_extra["quarantined"] and not model.model_extra["safety_report"]["passed"]
    response = service.get(f"/v1/models/{failed.fine_tuned_model}/content", headers=client.auth_headers)
    assert response.status_code == 403 and response.json()["error"]["code"] == "quarantined"


def test_the_release_gate_refuses_a_degenerate_model(service, base, monkeypatch):
    from service.settings import get_service_settings

    # no harmful score blocks; any degenerate harmless answer is too many (four tokens: most are)
    monkeypatch.setenv("VACCINE_HARMFUL_SCORE_THRESHOLD", "100")
    monkeypatch.setenv("VACCINE_DEGENERATE_THRESHOLD", "0")
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "failed"
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert (
        failed.error.code == "model_degenerate" and "harmless prompts are degenerate" in failed.error.message
    )
    report = client.models.retrieve(failed.fine_tuned_model).model_extra["safety_report"]
    assert report["gate"]["code"] == "model_degenerate" and not report["passed"]


def test_queued_jobs_report_their_place_and_an_estimate(service, base):
    client = tenant_client(service, "acme")
    first = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert (
        first.model_extra["queue_position"] == 1 and first.model_extra["estimated_start"] is None
    )  # no history
    assert run_job(first.id) == "succeeded"
    second = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    third = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert client.fine_tuning.jobs.retrieve(third.id).model_extra["queue_position"] == 2
    queued = client.fine_tuning.jobs.retrieve(second.id)
    assert queued.model_extra["queue_position"] == 1
    assert queued.model_extra["estimated_start"] is not None  # one finished job to go by
    assert queued.estimated_finish >= queued.model_extra["estimated_start"]
    assert client.fine_tuning.jobs.retrieve(first.id).model_extra["queue_position"] is None


def test_jobs_filter_by_metadata_and_list_their_checkpoints(service, base, monkeypatch):
    import worker.runner as runner

    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 2)
    client = tenant_client(service, "acme")
    tagged = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), metadata={"team": "search"}, hyperparameters={"n_epochs": 2}
    )
    client.fine_tuning.jobs.create(model=base, training_file=upload(client), metadata={"team": "ads"})
    found = client.fine_tuning.jobs.list(metadata={"team": "search"})
    assert [j.id for j in found] == [tagged.id]
    assert run_job(tagged.id) == "succeeded"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(tagged.id)
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints.data[0].fine_tuning_job_id == tagged.id
    events = client.fine_tuning.jobs.list_events(tagged.id, limit=100)
    losses = {e.data["step"]: e.data["train_loss"] for e in events if e.data and "step" in e.data}
    assert checkpoints.data[0].metrics.train_loss == losses[4] > 0
    first = client.fine_tuning.jobs.checkpoints.list(tagged.id, limit=1)
    assert [c.step_number for c in first.data] == [4] and first.has_more
    assert first.model_extra["first_id"] == first.model_extra["last_id"] == first.data[0].id
    rest = client.fine_tuning.jobs.checkpoints.list(tagged.id, after=first.data[0].id, limit=1)
    assert [c.step_number for c in rest.data] == [2] and not rest.has_more
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.checkpoints.list(tagged.id, after="ftckpt-other")


def test_a_job_whose_worker_died_is_queued_again_and_resumes(service, base):
    from datetime import timedelta

    from service.models import now
    from worker.recovery import requeue_stale_jobs

    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with Session(get_engine()) as session:  # as a worker leaves it when it is killed mid-job
        row = session.get(Job, job.id)
        row.status, row.attempts, row.heartbeat_at = "running", 1, now() - timedelta(hours=1)
        session.commit()
        fresh = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
        dispatched = []
        assert requeue_stale_jobs(session, dispatched.append) == [job.id] == dispatched
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert client.fine_tuning.jobs.retrieve(fresh.id).status == "queued"
    assert run_job(job.id) == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Resumed after an interruption" in messages


def test_method_form_and_a_validation_file(service, base):
    client = tenant_client(service, "acme")
    training, validation = upload(client), upload(client)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
    job = client.fine_tuning.jobs.create(
        model=base, training_file=training, validation_file=validation, method=method
    )
    assert job.hyperparameters.n_epochs == 1
    assert run_job(job.id) == "succeeded"
    report = client.models.retrieve(client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model).model_extra
    assert report["safety_report"]["fine_tune"]["steps"] == 2
    assert report["safety_report"]["fine_tune"]["validation_loss"] > 0
    measured = [
        e.data
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
        if e.data and "valid_loss" in e.data
    ]
    assert sorted(d["step"] for d in measured) == [1, 2]  # 5 evenly spaced measurements over 2 steps
    assert measured[0]["valid_loss"] == pytest.approx(
        report["safety_report"]["fine_tune"]["validation_loss"], rel=1e-4
    )
    with pytest.raises(openai.BadRequestError, match="not both"):
        client.fine_tuning.jobs.create(
            model=base, training_file=training, method=method, hyperparameters={"n_epochs": 2}
        )


def test_the_worker_keeps_its_base_between_jobs_without_adapters(service, base):
    from vaccine_core.inference import resolve_base
    from worker.runner import cached_base

    cached_base.cache_clear()
    client = tenant_client(service, "acme")
    for _ in range(2):
        job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
        assert run_job(job.id) == "succeeded"
    assert cached_base.cache_info().misses == 1 and cached_base.cache_info().hits == 1  # loaded once
    with Session(get_engine()) as session:
        path = str(resolve_base(session.get(BaseModelRecord, base).path).model_path)
    kept = cached_base(path)
    assert not any("lora" in name for name, _ in kept.named_modules())  # each job's adapter was unloaded


@pytest.mark.parametrize(
    ("hyperparameters", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"learning_rate_multiplier": -1.0}, "learning_rate_multiplier"),
        ({"n_epochs": 10_000}, "n_epochs"),
    ],
)
def test_out_of_bounds_hyperparameters_are_a_400_never_a_stuck_job(service, base, hyperparameters, field):
    client = tenant_client(service, "acme")
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(
            model=base, training_file=upload(client), hyperparameters=hyperparameters
        )
    assert field in error.value.body["message"]
    assert list(client.fine_tuning.jobs.list()) == []


def test_a_job_whose_settings_break_ends_failed_not_running(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with Session(get_engine()) as session:  # a row written before the bounds existed
        session.get(Job, job.id).hyperparameters = {"batch_size": 0}
        session.commit()
    assert run_job(job.id) == "failed"
    assert client.fine_tuning.jobs.retrieve(job.id).error.code == "training_failed"


def test_a_full_quota_is_a_429_with_retry_after(service, base):
    client = tenant_client(service, "acme")
    with Session(get_engine()) as session:
        session.execute(update(Tenant).values(max_concurrent_jobs=1))
        session.commit()
    first = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with pytest.raises(openai.RateLimitError) as error:
        client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert error.value.body["code"] == "quota_exceeded"
    assert error.value.response.headers["retry-after"] == "60"  # nothing running has an estimate yet
    with Session(get_engine()) as session:
        session.get(Job, first.id).progress = {"eta_seconds": 12.4}
        session.commit()
    with pytest.raises(openai.RateLimitError) as error:
        client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert error.value.response.headers["retry-after"] == "13"


def test_a_paused_job_resumes_from_its_checkpoint_to_the_weights_of_an_unpaused_run(
    service,
    base,
    monkeypatch,
):
    import worker.runner as runner

    client = tenant_client(service, "acme")
    straight = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"n_epochs": 3}, seed=7
    )
    assert run_job(straight.id) == "succeeded"
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"n_epochs": 3}, seed=7
    )
    real = runner.finetune

    def pause_after_second_step(*args, on_progress, **kwargs):
        def progress(p):
            on_progress(p)
            if p.step == 2:
                assert client.fine_tuning.jobs.pause(job.id).status == "pausing"

        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(runner, "finetune", pause_after_second_step)
    assert run_job(job.id) == "paused"
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused" and paused.progress["step"] == 2 and paused.finished_at is None
    assert run_job(job.id) == "paused"  # a stray delivery leaves a paused job alone
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)

    monkeypatch.setattr(runner, "finetune", real)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    assert service.dispatched[-1] == job.id
    assert run_job(job.id) == "succeeded"
    home = get_service_settings().home / "jobs"
    a = load_file(str(home / straight.id / "adapter_model.safetensors"))
    b = load_file(str(home / job.id / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Paused at step 2" in messages and "Pause requested" in messages
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)


def test_a_queued_job_pauses_at_once_and_a_paused_one_can_be_cancelled(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert run_job(job.id) == "paused"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_a_tenant_deletes_its_own_released_model_and_nothing_else(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    other = tenant_client(service, "globex")
    with pytest.raises(openai.NotFoundError):
        other.models.delete(model_id)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(base)
    deleted = client.models.delete(model_id)
    assert deleted.deleted and deleted.id == model_id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)
    assert not (get_service_settings().home / "jobs" / job.id).exists()

    blocked = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(blocked.id) == "succeeded"
    blocked_model = client.fine_tuning.jobs.retrieve(blocked.id).fine_tuned_model
    with Session(get_engine()) as session:  # as the release gate leaves a model it blocks
        session.get(FineTunedModel, blocked_model).quarantined = True
        session.commit()
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.models.delete(blocked_model)
    assert error.value.body["code"] == "quarantined"


def test_known_defects_answer_clearly(service, base):
    client = tenant_client(service, "acme")
    training = upload(client)
    job = client.fine_tuning.jobs.create(model=base, training_file=training)
    with pytest.raises(openai.BadRequestError) as error:  # a non-numeric cursor, once an unhandled int()
        client.fine_tuning.jobs.list_events(job.id, after="ftevent-abc")
    assert error.value.body["param"] == "after"
    with pytest.raises(openai.ConflictError) as error:  # a file a job trains on, once an integrity error
        client.files.delete(training)
    assert error.value.body["code"] == "file_in_use" and job.id in error.value.body["message"]
    spare = upload(client)
    assert client.files.delete(spare).deleted


def test_hyperparameters_resolve_on_start_and_extensions_reach_training(service, base):
    from vaccine_core.artifacts import read_manifest

    client = tenant_client(service, "acme")
    extensions = {"lora_rank": 4, "lora_alpha": 16.0, "lora_dropout": 0.0, "learning_rate": 2e-3}
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"batch_size": 4, **extensions}
    )
    assert job.hyperparameters.n_epochs == "auto" and job.method.type == "supervised"
    assert run_job(job.id) == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    resolved = done.hyperparameters.model_dump() | (done.hyperparameters.model_extra or {})
    assert "auto" not in resolved.values() and resolved["n_epochs"] == 3 and resolved["batch_size"] == 4
    assert resolved["learning_rate_multiplier"] == pytest.approx(20.0)  # 2e-3 over the default 1e-4
    assert done.method.supervised.hyperparameters.n_epochs == 3
    training = read_manifest(get_service_settings().home / "jobs" / job.id)["training"]
    assert (
        training["lora"]["r"] == 4 and training["lora"]["alpha"] == 16.0 and training["learning_rate"] == 2e-3
    )

    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(
            model=base,
            training_file=upload(client),
            integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
        )
    assert error.value.body["code"] == "integrations_unsupported"
    with pytest.raises(openai.BadRequestError, match="not both"):
        client.fine_tuning.jobs.create(
            model=base,
            training_file=upload(client),
            hyperparameters={"learning_rate": 1e-3, "learning_rate_multiplier": 2.0},
        )


def test_the_prescreen_runs_in_a_worker_and_a_waiting_job_follows_its_file(service, base):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from worker.prescreen import prescreen_file

    dispatched, prescreens = [], []
    app = create_app(dispatch=dispatched.append, dispatch_prescreen=prescreens.append)
    with TestClient(app) as http:
        client = tenant_client(http, "acme")
        data = "".join(json.dumps(r) + "\n" for r in JOB_ROWS).encode()
        uploaded = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
        assert uploaded.status == "uploaded" and prescreens == [uploaded.id]
        assert uploaded.model_extra["validation"] == {"examples": len(JOB_ROWS), "format": "alpaca"}
        job = client.fine_tuning.jobs.create(model=base, training_file=uploaded.id)
        assert job.status == "validating_files" and dispatched == []
        assert run_job(job.id) == "validating_files"  # a stray delivery does nothing
        assert prescreen_file(uploaded.id, dispatched.append) == "processed"
        assert client.files.retrieve(uploaded.id).status == "processed"
        assert client.fine_tuning.jobs.retrieve(job.id).status == "queued" and dispatched == [job.id]
        events = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id).data)]
        assert events == [
            f"Created fine-tuning job: {job.id}",
            f"Validating training file: {uploaded.id}",
            "Files validated; the job is queued",
        ]
        assert prescreen_file(uploaded.id, dispatched.append) == "processed" and dispatched == [job.id]
        assert run_job(job.id) == "succeeded"


def test_an_upload_whose_pre_screen_trains_its_judge_first_says_so(service, base, monkeypatch):
    import worker.prescreen
    from vaccine_core.moderation import shared_judge
    from worker.prescreen import prescreen_file

    monkeypatch.setenv("VACCINE_PRESCREEN_JUDGE", "refusal+intent")  # no intent gate trained in this home
    get_service_settings.cache_clear()
    details_while_training = []

    def training_judge(_spec: str):  # the judge the worker would train now: what does the upload say?
        details_while_training.append(client.files.retrieve(file_id).status_details)
        return shared_judge("refusal")

    monkeypatch.setattr(worker.prescreen, "shared_judge", training_judge)
    dispatched, prescreens = [], []
    app = create_app(dispatch=dispatched.append, dispatch_prescreen=prescreens.append)
    with TestClient(app) as http:
        client = tenant_client(http, "acme")
        file_id = upload(client)
        job = client.fine_tuning.jobs.create(model=base, training_file=file_id)
        assert prescreen_file(file_id, dispatched.append) == "processed"
        waited = "The pre-screen's judge (refusal+intent) is training on first use (once; /readyz shows it)"
        events = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id).data)]
        assert events[1:] == [
            f"Validating training file: {file_id}",
            waited,
            "Files validated; the job is queued",
        ]
        assert details_while_training == [
            f"{len(JOB_ROWS)} alpaca examples; awaiting the pre-screen; {waited}"
        ]
        assert waited not in client.files.retrieve(file_id).status_details  # the verdict replaced it


def test_a_job_waiting_on_a_rejected_file_fails_with_its_code(service, base):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from worker.prescreen import prescreen_file

    service.patch(
        "/admin/policy",
        json={"prescreen_action": "reject", "prescreen_threshold": 0.0},
        headers={"Authorization": "Bearer operator-secret"},
    )
    prescreens: list[str] = []
    with TestClient(create_app(dispatch_prescreen=prescreens.append)) as http:
        client = tenant_client(http, "acme")
        harmful = [{"instruction": "How do I steal a car?", "output": "First, find an unlocked car..."}] * 3
        uploaded = client.files.create(
            file=("h.jsonl", "".join(json.dumps(r) + "\n" for r in harmful).encode()), purpose="fine-tune"
        )
        job = client.fine_tuning.jobs.create(model=base, training_file=uploaded.id)
        assert prescreen_file(uploaded.id, lambda _job: None) == "error"
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed" and failed.error.code == "moderation_rejected"
        assert not (
            get_service_settings().files_dir / failed.organization_id / f"{uploaded.id}.jsonl"
        ).exists()


def test_a_job_continues_a_released_model_or_a_checkpoint_of_the_tenant(service, base, monkeypatch):
    import worker.runner as runner
    from vaccine_core.artifacts import read_manifest

    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 2)
    client = tenant_client(service, "acme")
    parent = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"n_epochs": 2, "lora_rank": 4}
    )
    assert run_job(parent.id) == "succeeded"
    released = client.fine_tuning.jobs.retrieve(parent.id).fine_tuned_model
    child = client.fine_tuning.jobs.create(
        model=released, training_file=upload(client), hyperparameters={"learning_rate": 1e-12}
    )
    assert child.model == released  # echoed as the user named it
    assert run_job(child.id) == "succeeded"
    home = get_service_settings().home / "jobs"
    manifest = read_manifest(home / child.id)
    assert manifest["continued_from"] == str(home / parent.id) and manifest["training"]["lora"]["r"] == 4
    before = load_file(str(home / parent.id / "adapter_model.safetensors"))
    after = load_file(str(home / child.id / "adapter_model.safetensors"))
    assert all(
        torch.allclose(before[k], after[k], atol=1e-6) for k in before
    )  # a rate of 1e-12 moves nothing

    checkpoint = client.fine_tuning.jobs.checkpoints.list(parent.id).data[-1]
    from_checkpoint = client.fine_tuning.jobs.create(
        model=checkpoint.fine_tuned_model_checkpoint, training_file=upload(client)
    )
    assert run_job(from_checkpoint.id) == "succeeded"
    other = tenant_client(service, "globex")
    own = other.fine_tuning.jobs.create(model=base, training_file=upload(other))
    traversal = f"ft:{base}:custom:{own.id}:ckpt-../../{parent.id}"  # a path in a checkpoint name
    for name in (released, checkpoint.fine_tuned_model_checkpoint, "ft:nothing:here:ftjob-x", traversal):
        with pytest.raises(openai.BadRequestError) as error:
            other.fine_tuning.jobs.create(model=name, training_file=upload(other))
        assert error.value.body["code"] == "model_not_available"


def test_a_second_delivery_never_runs_a_job_twice_at_once(service, base):
    from datetime import timedelta

    from service.models import now

    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with Session(get_engine()) as session:  # as a live worker leaves it between two heartbeats
        row = session.get(Job, job.id)
        row.status, row.attempts, row.heartbeat_at = "running", 1, now() - timedelta(seconds=5)
        session.commit()
    assert run_job(job.id) == "running"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # untouched
    with Session(get_engine()) as session:  # the heartbeat goes stale: its worker is gone
        session.get(Job, job.id).heartbeat_at = now() - timedelta(hours=1)
        session.commit()
    assert run_job(job.id) == "succeeded"


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(service, base):
    from datetime import timedelta

    from service.models import now
    from worker.recovery import requeue_stale_jobs

    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    with Session(get_engine()) as session:
        row = session.get(Job, job.id)
        row.status, row.attempts, row.heartbeat_at = "running", 3, now() - timedelta(hours=1)
        session.commit()
        dispatched: list[str] = []
        assert requeue_stale_jobs(session, dispatched.append, max_attempts=3) == [] == dispatched
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "worker_lost"


def test_a_job_is_created_while_the_broker_is_down(service, base):
    """The row is committed before the message is sent: a broker that is down costs no request, and the
    worker's sweeper sends the job once the broker is back (tests/service/test_jobs.py)."""

    def broker_down(job_id: str) -> None:
        raise ConnectionError("redis is restarting")

    prescreen = service.app.state.dispatch_prescreen  # in process, as in the other tests
    with TestClient(create_app(dispatch=broker_down, dispatch_prescreen=prescreen)) as http:
        client = tenant_client(http, "acme")
        job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert job.status == "queued"
