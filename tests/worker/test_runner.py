"""The job runner's liveness: a heartbeat while nothing steps, and a stop when the job was taken away."""

import time

from sqlalchemy import update
from sqlalchemy.orm import Session

import worker.runner as runner
from service.db import get_engine
from service.models import BaseModelRecord, Job, JobStatus
from service.settings import get_service_settings
from tests.service_helpers import OPERATOR, tenant_client, upload
from worker.runner import run_job


def test_the_heartbeat_goes_on_while_the_safety_report_runs(service, base, monkeypatch):
    monkeypatch.setenv("VACCINE_STALE_HEARTBEAT_SECONDS", "1")  # a beat every quarter second
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    real_report = runner.safety_report
    beats = []

    def slow_report(*args, **kwargs):
        for _ in range(2):  # no step runs here: only the heartbeat thread can move heartbeat_at
            with Session(get_engine()) as session:
                beats.append(session.get(Job, job_id).heartbeat_at)
            time.sleep(0.6)
        return real_report(*args, **kwargs)

    monkeypatch.setattr(runner, "safety_report", slow_report)
    assert run_job(job_id) == "succeeded"
    assert beats[1] > beats[0]


def test_a_worker_stops_a_job_the_reaper_queued_again(service, base, monkeypatch):
    """Taken for dead (its heartbeat late), the job was queued again for another worker: this one stops at
    the next step and leaves it queued, instead of training on beside the next."""
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"n_epochs": 3}
    ).id
    real = runner.finetune

    def requeued_after_first_step(*args, on_progress, **kwargs):
        def progress(p):
            on_progress(p)
            if p.step == 1:
                with Session(get_engine()) as session:
                    session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
                    session.commit()

        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(runner, "finetune", requeued_after_first_step)
    assert run_job(job_id) == "queued"
    assert client.fine_tuning.jobs.retrieve(job_id).progress["step"] == 1


def test_a_job_whose_base_is_no_longer_ready_fails_as_model_not_available(service, base):
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    with Session(get_engine()) as session:  # an operator's re-alignment failed after the job was queued
        session.execute(update(BaseModelRecord).where(BaseModelRecord.id == base).values(status="failed"))
        session.commit()
    assert run_job(job_id) == "failed"
    error = client.fine_tuning.jobs.retrieve(job_id).error
    assert error.code == "model_not_available" and f"{base} is not available (failed)" in error.message


def test_a_job_is_scored_under_the_policy_it_started_with(service, base, monkeypatch):
    """An operator who tightens the gate while a job trains changes the jobs claimed after, not this one:
    its report and gate are those of the policy it was claimed under."""
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    real = runner.finetune

    def gate_closed_while_training(*args, **kwargs):
        changed = service.patch("/admin/policy", json={"harmful_score_threshold": 0}, headers=OPERATOR)
        assert changed.status_code == 200
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "finetune", gate_closed_while_training)
    assert run_job(job_id) == "succeeded"
    report = service.get(
        f"/v1/models/{client.fine_tuning.jobs.retrieve(job_id).fine_tuned_model}",
        headers=client.auth_headers,
    ).json()["safety_report"]
    assert report["threshold"] == 100.0
    # the next job is claimed under the new policy: the same random model's answers are blocked
    monkeypatch.setattr(runner, "finetune", real)
    next_job = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    assert run_job(next_job) == "failed"
    assert client.fine_tuning.jobs.retrieve(next_job).error.code == "moderation_blocked"
