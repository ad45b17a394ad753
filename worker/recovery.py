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

from service import jobs
from service.models import Job, JobStatus, now

STALE_AFTER = timedelta(minutes=10)
DEFAULT_MAX_ATTEMPTS = 3


def requeue_stale_jobs(
    session: Session,
    dispatch: Callable[[str], None],
    stale_after: timedelta = STALE_AFTER,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[str]:
    """Queue again (and dispatch) the running jobs whose heartbeat is older than ``stale_after``; fail
    those that already started ``max_attempts`` times; mark paused the ones that were pausing. Each move
    re-checks the heartbeat, so a worker that beats in between keeps its job."""
    cutoff = now() - stale_after
    beating = Job.heartbeat_at >= cutoff
    stale = session.scalars(
        select(Job).where(Job.status.in_([JobStatus.RUNNING, JobStatus.PAUSING]), Job.heartbeat_at < cutoff)
    ).all()
    requeued = []
    for job in stale:
        if job.status == JobStatus.PAUSING:  # its worker died before it stopped: paused at its checkpoint
            jobs.move(
                session,
                job.id,
                allowed=[JobStatus.PAUSING],
                unless=beating,
                to=JobStatus.PAUSED,
                event="The worker stopped answering while pausing; paused",
                level="warn",
            )
        elif job.attempts >= max_attempts:
            jobs.move(
                session,
                job.id,
                allowed=[JobStatus.RUNNING],
                unless=beating,
                to=JobStatus.FAILED,
                event="The worker was lost too many times; the job failed",
                level="error",
                finished_at=now(),
                error=jobs.error(
                    "worker_lost",
                    f"Its worker stopped answering {job.attempts} times; it is not retried again.",
                ),
            )
        elif jobs.move(
            session,
            job.id,
            allowed=[JobStatus.RUNNING],
            unless=beating,
            to=JobStatus.QUEUED,
            event="The worker stopped answering; the job is queued again and will resume",
            dispatched_at=now(),
            level="warn",
        ):
            requeued.append(job.id)
    session.commit()
    for job_id in requeued:
        dispatch(job_id)
    return requeued
