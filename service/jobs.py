"""A fine-tuning job's life cycle: each change of status is a named function and a compare-and-set.

The API, the pre-screen, the alignment task, the reaper and the job's own worker all change jobs, from
different processes. A read-then-write (load the row, check its status, assign a new one, commit) lets
two of them interleave and one silently undo the other: a pre-screen that settles a file while a job on
that file is being created leaves the job ``validating_files`` for ever; a cancel that lands while the
worker releases the model is overwritten by ``succeeded``. Here every transition is one
``UPDATE jobs SET status = :to WHERE id = :id AND status IN (:allowed)``: exactly one of two racing
writers wins, and the loser learns it from the row count instead of overwriting. Each function commits
(one transaction each) and says whether it moved the job; dispatching to a worker is the caller's part,
after the commit.
"""

from collections.abc import Collection, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.orm import Session

from service.models import (
    CANCELLABLE_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    BaseModelRecord,
    BaseStatus,
    File,
    FileStatus,
    FineTunedModel,
    Job,
    JobStatus,
    add_event,
    now,
)
from service.redispatch import restamp_unsent

NOT_ENDED = tuple(status for status in JobStatus if status not in TERMINAL_JOB_STATUSES)


def job_dir(home: Path, job_id: str) -> Path:
    """Where a job's adapter, checkpoints and reports live."""
    return home / "jobs" / job_id


def fine_tuned_model_id(job: Job) -> str:
    """OpenAI's name for a job's model: ``ft:<base>:<suffix>:<job id>``."""
    return f"ft:{job.model}:{job.suffix or 'custom'}:{job.id}"


def checkpoint_model_id(job: Job, checkpoint: str) -> str:
    """The name a job's checkpoint ``step-N`` is continued from."""
    return f"{fine_tuned_model_id(job)}:ckpt-{checkpoint}"


def create(session: Session, *, validating: Collection[str], base_aligning: bool, **fields: Any) -> Job:
    """A new job: ``validating_files`` while any of the files ``validating`` (ids) is in its pre-screen,
    else ``queued``. Its first events say what it waits for, as OpenAI's do: each file's validation, and
    its base while that is still being aligned (on a first start, minutes of silence otherwise)."""
    status = JobStatus.VALIDATING_FILES if validating else JobStatus.QUEUED
    job = Job(status=status, dispatched_at=None if validating else now(), **fields)
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    for file_id in validating:
        kind = "training" if file_id == job.training_file else "validation"
        add_event(session, job.id, f"Validating {kind} file: {file_id}")
    if base_aligning:
        add_event(session, job.id, f"Waiting for the base model {job.model}: it is being aligned")
    session.commit()
    return job


def record_progress(session: Session, *, job_id: str, data: dict[str, Any], message: str) -> None:
    """A training step's metrics: the job's progress and heartbeat, and a metrics event."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress=data, heartbeat_at=now())
        .execution_options(synchronize_session=False)
    )
    add_event(session, job_id, message, data)
    session.commit()


def release(
    session: Session,
    *,
    job_id: str,
    path: Path,
    report: dict[str, Any],
    trained_tokens: int,
    result_file: str,
) -> JobStatus | None:
    """Hand a trained job's model back with its safety report: ``succeeded``, or ``failed`` with the model
    quarantined when the release gate refused it. None (nothing written) when the job is no longer
    running: cancelled or paused while it was being evaluated."""
    job = session.get(Job, job_id)
    model_id = fine_tuned_model_id(job)
    summary = {
        k: report[k]
        for k in ("harmful_score", "over_refusal", "degenerate_harmless", "embedding_drift", "threshold")
    }
    gate = report["gate"]
    ended = {
        "fine_tuned_model": model_id,
        "trained_tokens": trained_tokens,
        "finished_at": now(),
        "result_files": [result_file],
    }
    if gate is None:
        to, event, level, failure = JobStatus.SUCCEEDED, "The job has successfully completed", "info", None
    else:
        message = f"{gate['message']}; the model is quarantined until an operator reviews it."
        to, event, level = JobStatus.FAILED, "Release gate: the model is quarantined", "warn"
        failure = error(gate["code"], message)
    if not move(
        session,
        job_id,
        allowed=[JobStatus.RUNNING],
        to=to,
        event=event,
        level=level,
        data=summary,
        error=failure,
        **ended,
    ):
        session.rollback()
        return None
    session.merge(
        FineTunedModel(
            id=model_id,
            tenant_id=job.tenant_id,
            job_id=job.id,
            base_model=job.model,
            path=str(path),
            safety_report=report,
            quarantined=not report["passed"],
        )
    )
    session.commit()
    return to


def move(
    session: Session,
    job_id: str,
    *,
    allowed: Collection[JobStatus],
    to: JobStatus,
    event: str,
    level: str = "info",
    data: dict | None = None,
    unless: ColumnElement[bool] | None = None,
    **values: Any,
) -> bool:
    """Set ``job_id``'s status to ``to`` (and ``values``) if it is one of ``allowed`` (and ``unless`` does
    not hold); record ``event`` when it moved. Not committed: the callers below commit, each once."""
    condition = Job.status.in_(list(allowed))
    if unless is not None:
        condition = condition & ~unless
    moved = session.execute(
        update(Job)
        .where(Job.id == job_id, condition)
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved:
        add_event(session, job_id, event, data, level=level)
    return bool(moved)


def error(code: str, message: str) -> dict[str, Any]:
    """OpenAI's job error object."""
    return {"code": code, "message": message, "param": None}


def validating_on(file_ids: Iterable[str]) -> Select[tuple[Job]]:
    """The jobs still validating any of ``file_ids``, as their training or their validation file."""
    wanted = list(file_ids)
    return select(Job).where(
        Job.status == JobStatus.VALIDATING_FILES,
        Job.training_file.in_(wanted) | Job.validation_file.in_(wanted),
    )


def note_validating(session: Session, *, file_id: str, message: str) -> None:
    """Record ``message`` on each job still validating ``file_id``: what its validation waits on. Not
    committed: the caller commits it with what it changed on the file."""
    for job in session.scalars(validating_on([file_id])):
        add_event(session, job.id, message)


def settle_validating(session: Session, *, file_ids: Iterable[str]) -> list[str]:
    """Queue each ``validating_files`` job on ``file_ids`` whose files are all processed, and fail those
    with a file in error; return the ids it queued (for the caller to dispatch). Called by the pre-screen
    when it settles a file and by job creation right after its commit, so whichever of the two commits
    last sees the other's row: no job waits on a file that was settled in between."""
    session.expire_all()  # what other processes committed, not the rows this session read before
    waiting = session.scalars(validating_on(file_ids)).all()
    queued = []
    for job in waiting:
        files = [session.get(File, f) for f in (job.training_file, job.validation_file) if f]
        broken = next((f for f in files if f.status == FileStatus.ERROR), None)
        if broken is not None:
            # a file is only ever in error by its pre-screen: the judge refused it, or the judge failed
            code = "moderation_rejected" if broken.prescreen is not None else "prescreen_failed"
            move(
                session,
                job.id,
                allowed=[JobStatus.VALIDATING_FILES],
                to=JobStatus.FAILED,
                event=f"File {broken.id} failed validation",
                level="error",
                finished_at=now(),
                error=error(code, f"File {broken.id}: {broken.status_details}"),
            )
        elif all(f.status == FileStatus.PROCESSED for f in files) and move(
            session,
            job.id,
            allowed=[JobStatus.VALIDATING_FILES],
            to=JobStatus.QUEUED,
            event="Files validated; the job is queued",
            dispatched_at=now(),
        ):
            queued.append(job.id)
    session.commit()
    return queued


def start(session: Session, *, job_id: str, worker: str, alive_since: datetime, resumed: bool) -> bool:
    """Claim a job for ``worker``: a queued one, or a running one whose heartbeat is older than
    ``alive_since`` (its worker died; it resumes from its newest checkpoint). A second delivery of the same
    job while a live worker runs it claims nothing: a job never runs twice at once."""
    live = (
        (Job.status == JobStatus.RUNNING) & Job.heartbeat_at.is_not(None) & (Job.heartbeat_at >= alive_since)
    )
    moved = move(
        session,
        job_id,
        allowed=[JobStatus.QUEUED, JobStatus.RUNNING],
        unless=live,
        to=JobStatus.RUNNING,
        event="Resumed after an interruption" if resumed else "Fine-tuning job started",
        worker=worker,
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, now()),
        heartbeat_at=now(),
    )
    session.commit()
    return moved


def pause(session: Session, *, job_id: str) -> bool:
    """A running job is asked to checkpoint and stop between two steps (pausing); one that has not
    started is paused at once."""
    moved = move(
        session, job_id, allowed=[JobStatus.RUNNING], to=JobStatus.PAUSING, event="Pause requested"
    ) or move(
        session,
        job_id,
        allowed=[JobStatus.QUEUED, JobStatus.VALIDATING_FILES],
        to=JobStatus.PAUSED,
        event="Pause requested; paused before it started",
    )
    session.commit()
    return moved


def resume(session: Session, *, job_id: str) -> bool:
    """A paused job goes back in the queue and continues from its newest checkpoint."""
    moved = move(
        session,
        job_id,
        allowed=[JobStatus.PAUSED],
        to=JobStatus.QUEUED,
        event="Resumed: queued to continue from its newest checkpoint",
        dispatched_at=now(),
    )
    session.commit()
    return moved


def cancel(session: Session, *, job_id: str, by: str = "the user") -> bool:
    """A running job sees this between two steps and stops there; a queued or paused one never starts."""
    moved = move(
        session,
        job_id,
        allowed=CANCELLABLE_JOB_STATUSES,
        to=JobStatus.CANCELLED,
        event=f"Cancellation requested by {by}",
    )
    session.commit()
    return moved


def requeue_failed(session: Session, *, job_id: str, by: str) -> bool:
    """Put a failed job back in the queue (an operator's decision); it resumes from its newest checkpoint."""
    moved = move(
        session,
        job_id,
        allowed=[JobStatus.FAILED],
        to=JobStatus.QUEUED,
        event=f"Requeued by {by}",
        dispatched_at=now(),
        error=None,
        finished_at=None,
    )
    session.commit()
    return moved


def stopped(session: Session, *, job_id: str, step: int) -> JobStatus:
    """The worker stopped between two steps because the job is no longer running: a pausing job is paused
    (its newest checkpoint holds this step), a cancelled one ends; any other (queued again by the reaper,
    failed by an operator) is left as it is for whoever moved it."""
    paused = f"Paused at step {step}"
    if move(session, job_id, allowed=[JobStatus.PAUSING], to=JobStatus.PAUSED, event=paused):
        session.commit()
        return JobStatus.PAUSED
    move(
        session,
        job_id,
        allowed=[JobStatus.CANCELLED],
        to=JobStatus.CANCELLED,
        event=f"Cancelled at step {step}",
        finished_at=now(),
    )
    session.commit()
    return JobStatus(session.scalar(select(Job.status).where(Job.id == job_id)))


def beat(session: Session, *, job_id: str) -> bool:
    """The worker running ``job_id`` is alive: refresh its heartbeat while the job runs or pauses."""
    alive = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.RUNNING, JobStatus.PAUSING]))
        .values(heartbeat_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return bool(alive)


def fail(session: Session, *, job_id: str, code: str, message: str, event: str) -> bool:
    """End a job that has not ended ``failed`` with a readable ``{code, message}``."""
    moved = move(
        session,
        job_id,
        allowed=NOT_ENDED,
        to=JobStatus.FAILED,
        event=event,
        level="error",
        finished_at=now(),
        error=error(code, message),
    )
    session.commit()
    return moved


def base_ready(session: Session, *, base_id: str) -> list[str]:
    """Record on each job waiting for ``base_id`` (queued, or still validating its files) that its base is
    ready, and stamp the queued ones as handed to the broker now; return those, for the caller to send
    after this commit (a validating one is sent when its files pass)."""
    waiting = session.execute(
        select(Job.id, Job.status).where(
            Job.model == base_id, Job.status.in_([JobStatus.QUEUED, JobStatus.VALIDATING_FILES])
        )
    ).all()
    for job_id, _status in waiting:
        add_event(session, job_id, f"The base model {base_id} is aligned and ready")
    queued = [job_id for job_id, status in waiting if status == JobStatus.QUEUED]
    if queued:
        session.execute(
            update(Job)
            .where(Job.id.in_(queued), Job.status == JobStatus.QUEUED)
            .values(dispatched_at=now())
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return queued


def redispatch_lost(session: Session, *, sent_before: datetime) -> list[str]:
    """The queued jobs on a ready base last handed to the broker before ``sent_before``: a broker that
    restarted without persistence lost their messages, and nothing else would ever start them. Each is
    stamped again and returned for the caller to send (service/redispatch.py); a worker claims a job once,
    so a duplicate of a message that was not lost is harmless."""
    ready = select(BaseModelRecord.id).where(BaseModelRecord.status == BaseStatus.READY)
    return restamp_unsent(
        session, Job, waiting=[JobStatus.QUEUED], sent_before=sent_before, also=[Job.model.in_(ready)]
    )
