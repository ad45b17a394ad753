"""The Celery application: Redis in production, a broker in files for the embedded default.

Reliability comes from Celery's own settings: a job's message is acknowledged only when the job is done
(``acks_late``) and is given back if the worker process dies (``reject_on_worker_lost``); each worker
takes one job at a time (prefetch 1); Redis redelivers an unacknowledged job only after a visibility
timeout longer than the longest job. The job runner is idempotent by job id and resumes from the newest
checkpoint, so a redelivered job continues where the dead worker stopped.
"""

import logging
import threading
import time
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready
from sqlalchemy.orm import Session

from service import jobs
from service.db import get_engine
from service.models import now
from service.settings import ServiceSettings, get_service_settings
from worker.alignment import align_base
from worker.prescreen import prescreen_file
from worker.recovery import requeue_stale_jobs
from worker.runner import run_job

log = logging.getLogger(__name__)
TASK_NAME = "vaccine.run_job"
ALIGN_TASK_NAME = "vaccine.align_base"
PRESCREEN_TASK_NAME = "vaccine.prescreen_file"


def make_celery(settings: ServiceSettings) -> Celery:
    app = Celery("vaccine", broker=settings.broker_url)
    transport_options: dict = {"visibility_timeout": settings.longest_job_seconds}
    if settings.broker_url.startswith("filesystem://"):
        for folder in ("in", "processed", "control"):
            (settings.broker_dir / folder).mkdir(parents=True, exist_ok=True)
        transport_options |= {
            "data_folder_in": str(settings.broker_dir / "in"),
            "data_folder_out": str(settings.broker_dir / "in"),
            "processed_folder": str(settings.broker_dir / "processed"),
            "control_folder": str(settings.broker_dir / "control"),  # else it lands in the working directory
            "store_processed": False,
        }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # results live in the database
        worker_hijack_root_logger=False,
    )

    def dispatch_job(job_id: str) -> None:  # through this app: its broker and its queue
        app.send_task(TASK_NAME, args=[job_id])

    def align_task(base_id: str) -> str:
        return align_base(base_id, dispatch=dispatch_job)

    def prescreen_task(file_id: str) -> str:
        return prescreen_file(file_id, dispatch_job)

    # not shared: each app's tasks dispatch through that app (a shared task would join every app)
    app.task(name=TASK_NAME, shared=False)(run_job)
    app.task(name=ALIGN_TASK_NAME, shared=False)(align_task)
    app.task(name=PRESCREEN_TASK_NAME, shared=False)(prescreen_task)
    return app


celery_app = make_celery(get_service_settings())


def dispatch(job_id: str) -> None:
    """Queue a job for the workers (the API's dispatch)."""
    celery_app.send_task(TASK_NAME, args=[job_id])


def dispatch_alignment(base_id: str) -> None:
    """Queue an operator's alignment of a registered base."""
    celery_app.send_task(ALIGN_TASK_NAME, args=[base_id])


def dispatch_prescreen(file_id: str) -> None:
    """Queue an upload's moderation pre-screen."""
    celery_app.send_task(PRESCREEN_TASK_NAME, args=[file_id])


def reap(settings: ServiceSettings) -> list[str]:
    """Queue again the jobs whose worker died (their heartbeat stopped), failing those retried too often;
    send again the queued jobs whose message the broker may have lost."""
    with Session(get_engine()) as session:
        requeued = requeue_stale_jobs(
            session,
            dispatch,
            stale_after=timedelta(seconds=settings.stale_heartbeat_seconds),
            max_attempts=settings.max_attempts,
        )
        sent_before = now() - timedelta(seconds=settings.redispatch_after_seconds)
        resent = jobs.redispatch_lost(session, sent_before=sent_before)
    for job_id in resent:
        dispatch(job_id)
    return requeued + resent


@worker_ready.connect
def _recover(**_kwargs) -> None:
    """A starting worker reaps at once, then every ``reaper_interval_seconds`` in a daemon thread (a job
    whose worker died is picked up even when no worker restarts)."""
    settings = get_service_settings()
    reap(settings)

    def keep_reaping() -> None:
        while True:
            time.sleep(settings.reaper_interval_seconds)
            try:
                reap(settings)
            except Exception:  # a database hiccup must not end the reaper
                log.exception("reaping stale jobs failed")

    threading.Thread(target=keep_reaping, name="reaper", daemon=True).start()
