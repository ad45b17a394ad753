"""The job life cycle (service/jobs.py): compare-and-set transitions, and the interleavings they close."""

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import api.routes.jobs as job_routes
import worker.runner as runner
from service import jobs
from service.db import get_engine
from service.models import BaseModelRecord, BaseStatus, FineTunedModel, Job, JobEvent, JobStatus, now
from tests.service_helpers import tenant_client, upload
from worker.prescreen import prescreen_file
from worker.runner import run_job


def status(job_id: str) -> str:
    with Session(get_engine()) as session:
        return session.get(Job, job_id).status


def test_a_file_settled_while_its_job_is_created_still_queues_the_job(service, base, monkeypatch):
    """The pre-screen commits the file's verdict after the route read the file as uploaded and before it
    committed the job: the pre-screen saw no job to queue, so the route must."""
    client = tenant_client(service, "acme")
    held: list[str] = []
    monkeypatch.setattr(service.app.state, "dispatch_prescreen", held.append)  # the worker has not run yet
    file_id = upload(client)
    assert held == [file_id] and client.files.retrieve(file_id).status == "uploaded"
    real_check = job_routes.check_quota

    def prescreen_in_between(session, tenant):
        prescreen_file(file_id, service.dispatched.append)  # another process, its own transaction
        return real_check(session, tenant)

    monkeypatch.setattr(job_routes, "check_quota", prescreen_in_between)
    job = client.fine_tuning.jobs.create(model=base, training_file=file_id)
    assert client.files.retrieve(file_id).status == "processed"
    assert job.status == "queued" and service.dispatched == [job.id]


def test_a_job_cancelled_during_its_safety_evaluation_is_not_released(service, base, monkeypatch):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    real_report = runner.safety_report

    def cancelled_meanwhile(*args, **kwargs):
        report = real_report(*args, **kwargs)
        client.fine_tuning.jobs.cancel(job.id)
        return report

    monkeypatch.setattr(runner, "safety_report", cancelled_meanwhile)
    assert run_job(job.id) == "cancelled"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None and done.finished_at is not None
    with Session(get_engine()) as session:
        assert session.query(FineTunedModel).count() == 0


def test_a_job_is_claimed_once_and_again_only_after_its_heartbeat_stops(service, base):
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    alive_since = now() - timedelta(minutes=10)
    with Session(get_engine()) as session:
        claim = dict(job_id=job_id, alive_since=alive_since, resumed=False)
        assert jobs.start(session, worker="a", **claim)
        assert not jobs.start(session, worker="b", **claim)  # a second delivery while "a" beats
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=alive_since - timedelta(seconds=1))
        )
        session.commit()
        assert jobs.start(session, worker="b", **{**claim, "resumed": True})
        row = session.get(Job, job_id)
        assert (row.status, row.worker, row.attempts) == (JobStatus.RUNNING, "b", 2)
        messages = session.query(JobEvent.message).filter(JobEvent.job_id == job_id).all()
        assert [m for (m,) in messages][-2:] == ["Fine-tuning job started", "Resumed after an interruption"]


def test_transitions_move_only_from_the_states_they_name(service, base):
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    with Session(get_engine()) as session:
        assert not jobs.resume(session, job_id=job_id)  # queued, not paused
        assert not jobs.requeue_failed(session, job_id=job_id, by="an operator")
        assert jobs.pause(session, job_id=job_id) and status(job_id) == JobStatus.PAUSED
        assert not jobs.pause(session, job_id=job_id)
        assert jobs.resume(session, job_id=job_id) and status(job_id) == JobStatus.QUEUED
        assert jobs.fail(session, job_id=job_id, code="x", message="broken", event="failed")
        assert not jobs.cancel(session, job_id=job_id)  # it has ended
        assert not jobs.fail(session, job_id=job_id, code="y", message="again", event="failed again")
        assert session.get(Job, job_id).error["code"] == "x"
        assert jobs.requeue_failed(session, job_id=job_id, by="an operator")
        session.expire_all()
        row = session.get(Job, job_id)
        assert (row.status, row.error, row.finished_at) == (JobStatus.QUEUED, None, None)


@pytest.mark.parametrize("racing", ["cancel", "pause"])
def test_a_stop_lands_whatever_the_worker_wrote_last(service, base, racing):
    """The worker's stop (paused or cancelled between two steps) follows the user's request, never
    overwrites it with the other."""
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    with Session(get_engine()) as session:
        assert jobs.start(session, job_id=job_id, worker="a", alive_since=now(), resumed=False)
        assert (jobs.cancel if racing == "cancel" else jobs.pause)(session, job_id=job_id)
        expected = JobStatus.CANCELLED if racing == "cancel" else JobStatus.PAUSED
        assert jobs.stopped(session, job_id=job_id, step=3) == expected == status(job_id)


def test_a_queued_job_whose_message_was_lost_is_sent_again_once(service, base):
    """A broker restarted without persistence forgets queued messages: the sweeper sends each queued job
    on a ready base again once its last send is older than the setting, and not twice per sweep."""
    client = tenant_client(service, "acme")
    job_id = client.fine_tuning.jobs.create(model=base, training_file=upload(client)).id
    with Session(get_engine()) as session:
        assert jobs.redispatch_lost(session, sent_before=now() - timedelta(minutes=30)) == []  # just sent
        assert jobs.redispatch_lost(session, sent_before=now() + timedelta(seconds=1)) == [job_id]
        assert jobs.redispatch_lost(session, sent_before=now() - timedelta(seconds=5)) == []  # stamped
        session.execute(update(BaseModelRecord).values(status=BaseStatus.ALIGNING))
        session.commit()  # the alignment sends the jobs waiting on a base, not the sweeper
        assert jobs.redispatch_lost(session, sent_before=now() + timedelta(seconds=1)) == []
