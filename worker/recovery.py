"""Pick up jobs whose worker died: a running job whose heartbeat stopped is queued again (or, after
``max_attempts`` starts, failed with ``worker_lost``: a job that kills its worker must not loop for ever).

Celery redelivers an unacknowledged message after the broker's visibility timeout (acks_late), but that
timeout must outlast the longest job; the heartbeat lets a restarted worker recover much sooner. The job
runner resumes from the newest checkpoint, so little work is lost either way.
"""

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Job, JobStatus, add_event, now

STALE_AFTER = timedelta(minutes=10)
DEFAULT_MAX_ATTEMPTS = 3


def requeue_stale_jobs(
    session: Session,
    dispatch: Callable[[str], None],
    stale_after: timedelta = STALE_AFTER,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[str]:
    """Queue again (and dispatch) the running jobs whose heartbeat is older than ``stale_after``; fail
    those that already started ``max_attempts`` times; mark paused the ones that were pausing."""
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
    requeued = []
    for job in stale:
        if job.attempts >= max_attempts:
            job.status, job.finished_at = JobStatus.FAILED, now()
            job.error = {
                "code": "worker_lost",
                "message": f"Its worker stopped answering {job.attempts} times; it is not retried again.",
                "param": None,
            }
            add_event(session, job.id, "The worker was lost too many times; the job failed", level="error")
            continue
        job.status = JobStatus.QUEUED
        add_event(
            session,
            job.id,
            "The worker stopped answering; the job is queued again and will resume",
            level="warn",
        )
        requeued.append(job.id)
    session.commit()
    for job_id in requeued:
        dispatch(job_id)
    return requeued
