"""Pick up jobs whose worker died: a running job whose heartbeat stopped is queued again.

Celery redelivers an unacknowledged message after the broker's visibility timeout (acks_late), but that
timeout must outlast the longest job; the heartbeat lets a restarted worker recover much sooner. The job
runner resumes from the newest checkpoint, so little work is lost either way.
"""

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Job, JobStatus, add_event, now

STALE_AFTER = timedelta(minutes=10)


def requeue_stale_jobs(
    session: Session, dispatch: Callable[[str], None], stale_after: timedelta = STALE_AFTER
) -> list[str]:
    cutoff = now() - stale_after
    pausing = session.scalars(
        select(Job).where(Job.status == JobStatus.PAUSING, Job.heartbeat_at < cutoff)
    ).all()
    for job in pausing:  # its worker died before it stopped: paused at its newest checkpoint
        job.status = JobStatus.PAUSED
        add_event(session, job.id, "The worker stopped answering while pausing; paused", level="warn")
    stale = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)
    ).all()
    for job in stale:
        job.status = JobStatus.QUEUED
        add_event(
            session,
            job.id,
            "The worker stopped answering; the job is queued again and will resume",
            level="warn",
        )
    session.commit()
    for job in stale:
        dispatch(job.id)
    return [job.id for job in stale]
