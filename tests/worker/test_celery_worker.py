"""A whole job through a real Celery worker: on Redis with PostgreSQL, and on the embedded default
(a broker in files, SQLite). The API is driven with the official openai package."""

import json
import time
import uuid
from contextlib import contextmanager, nullcontext

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from service.db import get_engine
from service.models import BaseModelRecord
from service.settings import get_service_settings
from service.tenants import create_tenant
from tests.service_helpers import (
    REDIS_URL,
    fresh_postgres_database,
    redis_or_skip,
    small_safety_evaluation,
    upgrade,
)
from vaccine_core.align import align
from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig

FAST = TrainingConfig(epochs=1.0, batch_size=4, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=4))


@contextmanager
def configured(monkeypatch, tmp_path, database_url: str, broker_url: str):
    monkeypatch.setenv("VACCINE_DATABASE_URL", database_url)
    monkeypatch.setenv("VACCINE_BROKER_URL", broker_url)
    monkeypatch.setenv("VACCINE_PRESCREEN_JUDGE", "refusal")
    monkeypatch.setenv("VACCINE_PRESCREEN_ACTION", "warn")  # the refusal-phrase judge flags non-refusals
    monkeypatch.setenv("VACCINE_RELEASE_FLAGGED_SHARE", "1")  # which the release gate must not read
    small_safety_evaluation(monkeypatch, tmp_path)
    get_service_settings.cache_clear()
    get_engine.cache_clear()
    upgrade(database_url)
    try:
        yield get_service_settings()
    finally:
        get_engine().dispose()
        get_engine.cache_clear()
        get_service_settings.cache_clear()


@pytest.mark.postgres
@pytest.mark.parametrize("stack", ["redis+postgres", "embedded"])
def test_a_job_runs_end_to_end_through_a_celery_worker(
    stack, tmp_path, monkeypatch, tiny_model_dir, alpaca_file
):
    from celery.contrib.testing.worker import start_worker

    from worker.celery_app import PRESCREEN_TASK_NAME, TASK_NAME, make_celery

    if stack == "redis+postgres":
        redis_or_skip()
        database = fresh_postgres_database()
        broker = REDIS_URL
    else:
        database = nullcontext(f"sqlite:///{tmp_path / 'embedded.db'}")
        broker = "filesystem://"
    with database as database_url, configured(monkeypatch, tmp_path, database_url, broker) as settings:
        celery = make_celery(settings)
        celery.conf.task_default_queue = f"test-{uuid.uuid4().hex[:8]}"  # no stray messages from other runs
        aligned = align(
            str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("vaccine"), FAST
        )
        with Session(get_engine()) as session:
            session.add(
                BaseModelRecord(id="tiny", source="tiny", status="ready", path=str(aligned.output_dir))
            )
            _tenant, key = create_tenant(session, "acme")

        app = create_app(
            dispatch=lambda job_id: celery.send_task(TASK_NAME, args=[job_id]),
            dispatch_prescreen=lambda file_id: celery.send_task(PRESCREEN_TASK_NAME, args=[file_id]),
        )
        with (
            start_worker(celery, pool="solo", concurrency=1, perform_ping_check=False, loglevel="WARNING"),
            TestClient(app) as http,
        ):
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0
            )
            rows = "".join(
                json.dumps({"prompt": f"Count to {i}", "completion": str(i)}) + "\n" for i in range(8)
            )
            uploaded = client.files.create(file=("t.jsonl", rows.encode()), purpose="fine-tune")
            # created at once, before the worker's pre-screen: the job validates its file, then queues
            job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
            assert client.files.wait_for_processing(uploaded.id, poll_interval=0.2).status == "processed"
            deadline = time.monotonic() + 120
            active = {"validating_files", "queued", "running"}
            while (job := client.fine_tuning.jobs.retrieve(job.id)).status in active:
                assert time.monotonic() < deadline, f"job still {job.status}"
                time.sleep(0.2)
        assert job.status == "succeeded", job.error
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert events[0] == "The job has successfully completed" and any(
            m.startswith("Step 1/") for m in events
        )


def test_a_setting_out_of_bounds_stops_a_celery_worker_with_the_variable_named_not_a_traceback(monkeypatch):
    # `celery -A worker.celery_app:celery_app worker` calls this on import (checked by hand: it prints the
    # line below and exits 1); called here, since a worker process takes seconds to import
    from worker.celery_app import worker_settings

    monkeypatch.setenv("VACCINE_MAX_ATTEMPTS", "0")
    get_service_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as stopped:
            worker_settings()
    finally:
        monkeypatch.delenv("VACCINE_MAX_ATTEMPTS")
        get_service_settings.cache_clear()
    assert stopped.value.code == "VACCINE_MAX_ATTEMPTS='0': Input should be greater than or equal to 1"
