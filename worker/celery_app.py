"""The worker's Celery app: the broker's app (``service.queue``) with the job, alignment and pre-screen
tasks registered on it, and the reaper that a starting worker runs."""

import logging
import sys
import threading
import time
from datetime import timedelta

from celery import Celery
from celery.signals import worker_ready
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import jobs
from service.db import get_engine
from service.models import now
from service.queue import ALIGN_TASK_NAME, PRESCREEN_TASK_NAME, TASK_NAME
from service.queue import make_celery as make_broker
from service.redispatch import lost_alignments, lost_prescreens
from service.settings import ServiceSettings, get_service_settings, settings_errors
from worker.alignment import align_base
from worker.prescreen import prescreen_file
from worker.recovery import requeue_stale_jobs
from worker.runner import run_job

log = logging.getLogger(__name__)


def make_celery(settings: ServiceSettings) -> Celery:
    """The broker's app with the worker's tasks registered on it."""
    app = make_broker(settings)

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


def worker_settings() -> ServiceSettings:
    """The service's settings, or an exit naming each environment variable out of bounds: a worker started
    by `celery -A worker.celery_app` reads them on import, before any command of ours could check them."""
    try:
        return get_service_settings()
    except ValidationError as exc:
        sys.exit(settings_errors(exc))


celery_app = make_celery(worker_settings())


def dispatch(job_id: str) -> None:
    """Queue a job through the worker's own app (the reaper's sends)."""
    celery_app.send_task(TASK_NAME, args=[job_id])


def dispatch_prescreen(file_id: str) -> None:
    celery_app.send_task(PRESCREEN_TASK_NAME, args=[file_id])


def dispatch_alignment(base_id: str) -> None:
    celery_app.send_task(ALIGN_TASK_NAME, args=[base_id])


def reap(settings: ServiceSettings) -> list[str]:
    """Queue again the jobs whose worker died (their heartbeat stopped), failing those retried too often;
    send again what the broker may have lost: queued jobs, uploads waiting for their pre-screen, bases
    waiting for their alignment. The ids of all of them."""
    with Session(get_engine()) as session:
        requeued = requeue_stale_jobs(
            session,
            dispatch,
            stale_after=timedelta(seconds=settings.stale_heartbeat_seconds),
            max_attempts=settings.max_attempts,
        )
        sent_before = now() - timedelta(seconds=settings.redispatch_after_seconds)
        resent = jobs.redispatch_lost(session, sent_before=sent_before)
        prescreens = lost_prescreens(session, sent_before=sent_before)
        alignments = lost_alignments(session, sent_before=sent_before)
    for job_id in resent:
        dispatch(job_id)
    for file_id in prescreens:
        dispatch_prescreen(file_id)
    for base_id in alignments:
        dispatch_alignment(base_id)
    return requeued + resent + prescreens + alignments


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
