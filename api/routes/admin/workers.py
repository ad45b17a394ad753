"""Workers and queues: what Celery's inspect reports, the broker's queue length, jobs per status, and what
the workers are still preparing (bases aligning, the default judge training)."""

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from api.deps import SessionDep
from service.models import Job
from service.queue import worker_report
from service.warmup import warming_up

router = APIRouter(prefix="/workers")


@router.get("")
def workers(session: SessionDep) -> dict[str, Any]:
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {**worker_report(), "jobs": counts, "warming_up": warming_up(session)}
