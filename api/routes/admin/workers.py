"""Workers and queues: what Celery's inspect reports, the broker's queue length, jobs per status."""

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from api.deps import SessionDep
from service.models import Job

router = APIRouter(prefix="/workers")


def _queue_length(celery: Any, queue: str) -> int | None:
    try:
        with celery.connection_for_read() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:  # a broker that cannot say (or is down): report unknown, not an error page
        return None


@router.get("")
def workers(session: SessionDep) -> dict[str, Any]:
    from worker.celery_app import celery_app

    inspect = celery_app.control.inspect(timeout=1.0)
    try:
        active, stats = inspect.active() or {}, inspect.stats() or {}
    except Exception:
        active, stats = {}, {}
    queue = celery_app.conf.task_default_queue
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {
        "workers": {
            name: {"active_jobs": [t.get("args") for t in active.get(name, [])], "pid": info.get("pid")}
            for name, info in stats.items()
        },
        "queue": {"name": queue, "length": _queue_length(celery_app, queue)},
        "jobs": counts,
    }
