"""The broker as the API and the workers share it: one Celery app configured for reliability, the task
names, and sending to them.

The tasks themselves are registered by ``worker/celery_app.py``. Sending a task by its name needs none
of their code, so the API process never imports the worker (nor the training code behind it).

Reliability comes from Celery's own settings: a job's message is acknowledged only when the job is done
(``acks_late``) and is given back if the worker process dies (``reject_on_worker_lost``); each worker
takes one job at a time (prefetch 1); Redis redelivers an unacknowledged job only after a visibility
timeout longer than the longest job. The job runner is idempotent by job id and resumes from the newest
checkpoint, so a redelivered job continues where the dead worker stopped.
"""

import functools
from typing import Any

from celery import Celery

from service.settings import ServiceSettings, get_service_settings

TASK_NAME = "vaccine.run_job"
ALIGN_TASK_NAME = "vaccine.align_base"
PRESCREEN_TASK_NAME = "vaccine.prescreen_file"


def make_celery(settings: ServiceSettings) -> Celery:
    """A Celery app on the settings' broker: Redis in production, a broker in files for the embedded
    default. No task is registered here."""
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
    return app


@functools.cache
def broker() -> Celery:
    """This process's Celery app, on the service's settings (made once, on first use)."""
    return make_celery(get_service_settings())


def dispatch(job_id: str) -> None:
    """Queue a job for the workers."""
    broker().send_task(TASK_NAME, args=[job_id])


def dispatch_alignment(base_id: str) -> None:
    """Queue an operator's alignment of a registered base."""
    broker().send_task(ALIGN_TASK_NAME, args=[base_id])


def dispatch_prescreen(file_id: str) -> None:
    """Queue an upload's moderation pre-screen."""
    broker().send_task(PRESCREEN_TASK_NAME, args=[file_id])


def queue_length(celery: Celery, queue: str) -> int | None:
    try:
        with celery.connection_for_read() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:  # a broker that cannot say (or is down): unknown, not an error
        return None


def worker_report() -> dict[str, Any]:
    """What Celery's inspect says of the live workers (their jobs and pids), and the queue's length."""
    celery = broker()
    inspect = celery.control.inspect(timeout=1.0)
    try:
        active, stats = inspect.active() or {}, inspect.stats() or {}
    except Exception:
        active, stats = {}, {}
    queue = celery.conf.task_default_queue
    return {
        "workers": {
            name: {"active_jobs": [t.get("args") for t in active.get(name, [])], "pid": info.get("pid")}
            for name, info in stats.items()
        },
        "queue": {"name": queue, "length": queue_length(celery, queue)},
    }
