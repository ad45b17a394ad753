"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel fine-tuning jobs, and read their events."""

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import APIError, not_found
from service import checkpoints, jobs
from service.models import (
    ACTIVE_JOB_STATUSES,
    BASE_ALIGNING,
    BaseModelRecord,
    BaseStatus,
    File,
    FileStatus,
    FineTunedModel,
    Job,
    JobEvent,
    JobStatus,
    Tenant,
    epoch,
    now,
)
from service.settings import ServiceSettings
from vaccine_core.artifacts import ADAPTER_WEIGHTS, CHECKPOINTS_DIR

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


class Hyperparameters(BaseModel):
    # bounded so a bad value is a 400 at creation, never a job that fails once a worker holds it
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = "auto"
    # extensions beyond OpenAI's three (README, "The service"): the LoRA adapter and an absolute rate
    lora_rank: Annotated[int, Field(ge=1, le=256)] | None = None
    lora_alpha: Annotated[float, Field(gt=0, le=1024)] | None = None
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def _one_rate(self) -> "Hyperparameters":
        if self.learning_rate is not None and self.learning_rate_multiplier != "auto":
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        return self

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v not in ("auto", None)}


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    type: Literal["supervised"]
    supervised: SupervisedMethod = Field(default_factory=SupervisedMethod)


class CreateJob(BaseModel):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None  # the newer form: {"type": "supervised", "supervised": {"hyperparameters"}}
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None  # none is supported: a non-empty list is refused


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: dict[str, Any] | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    estimated_finish: int | None = None
    progress: dict[str, Any] | None = None
    queue_position: int | None = None
    estimated_start: int | None = None
    method: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: Job, queue: "QueueState | None" = None) -> "JobObject":
        eta = (job.progress or {}).get("eta_seconds")
        position = queue.position(job) if queue is not None and job.status == JobStatus.QUEUED else None
        start = queue.estimated_start(position, job.model) if position is not None else None
        hyperparameters = {
            "n_epochs": "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
        } | (job.hyperparameters or {})
        return cls(
            id=job.id,
            created_at=epoch(job.created_at),
            error=job.error,
            fine_tuned_model=job.fine_tuned_model,
            finished_at=epoch(job.finished_at),
            hyperparameters=hyperparameters,
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            model=job.continues or job.model,
            organization_id=job.tenant_id,
            seed=job.seed,
            result_files=job.result_files or [],
            status=job.status,
            trained_tokens=job.trained_tokens,
            training_file=job.training_file,
            validation_file=job.validation_file,
            suffix=job.suffix,
            metadata=job.user_metadata,
            estimated_finish=_estimated_finish(job, eta, start, queue),
            progress=job.progress,
            queue_position=position,
            estimated_start=start,
        )


def _estimated_finish(
    job: Job, eta: float | None, start: int | None, queue: "QueueState | None"
) -> int | None:
    if job.status == JobStatus.RUNNING and eta is not None and job.heartbeat_at is not None:
        return epoch(job.heartbeat_at) + int(eta)
    if start is not None and queue is not None and queue.typical_seconds:
        return start + int(queue.typical_seconds)
    return None


class QueueState:
    """Where queued jobs stand: their place among all tenants' queued jobs (oldest first), and a start
    estimate from the typical duration of recent jobs and the number of busy workers."""

    def __init__(self, session: Session):
        # each figure is read when first asked for: a poll of a job that is not queued asks for none
        self.session = session

    @functools.cached_property
    def queued(self) -> list[str]:
        queued = select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at, Job.id)
        return list(self.session.scalars(queued))

    @functools.cached_property
    def typical_seconds(self) -> float | None:
        recent = self.session.execute(
            select(Job.started_at, Job.finished_at)
            .where(
                Job.status == JobStatus.SUCCEEDED, Job.started_at.is_not(None), Job.finished_at.is_not(None)
            )
            .order_by(Job.finished_at.desc())
            .limit(20)
        ).all()
        durations = sorted((end - begin).total_seconds() for begin, end in recent)
        return durations[len(durations) // 2] if durations else None

    @functools.cached_property
    def running(self) -> int:
        count = select(func.count()).select_from(Job).where(Job.status == JobStatus.RUNNING)
        return self.session.scalar(count) or 0

    @functools.cached_property
    def alignment_eta(self) -> dict[str, float | None]:
        """Bases still aligning: a job on one starts no sooner than its alignment's remaining time."""
        aligning = select(BaseModelRecord).where(BaseModelRecord.status.in_(BASE_ALIGNING))
        return {base.id: (base.progress or {}).get("eta_seconds") for base in self.session.scalars(aligning)}

    def position(self, job: Job) -> int | None:
        return self.queued.index(job.id) + 1 if job.id in self.queued else None

    def estimated_start(self, position: int, model: str) -> int | None:
        """Jobs ahead run ``max(running, 1)`` at a time; a busy worker frees up after a typical job; and
        nothing starts before its base is aligned."""
        start = None
        if self.typical_seconds is not None:
            workers = max(self.running, 1)
            rounds = (position - 1) // workers + (1 if self.running else 0)
            start = int(now().timestamp() + rounds * self.typical_seconds)
        if model in self.alignment_eta:
            eta = self.alignment_eta[model]
            aligned = int(now().timestamp() + eta) if eta is not None else None
            start = None if aligned is None else max(start or aligned, aligned)
        return start


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventObject]
    has_more: bool


def _owned(session: SessionDep, tenant: TenantDep, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise not_found("fine-tuning job", job_id)
    return job


def _usable_file(session: SessionDep, tenant: TenantDep, file_id: str, param: str) -> File:
    row = session.get(File, file_id)
    if row is None or row.tenant_id != tenant.id:
        raise APIError(400, "invalid_file", f"No file with id '{file_id}'.", param=param)
    if row.purpose != "fine-tune" or row.status == FileStatus.ERROR:
        raise APIError(
            400,
            "invalid_file",
            f"File '{file_id}' is not a usable fine-tune file ({row.status}).",
            param=param,
        )
    return row


def _hyperparameters(body: CreateJob) -> Hyperparameters:
    if body.integrations:
        raise APIError(
            400, "integrations_unsupported", "This service supports no integrations.", param="integrations"
        )
    if body.method is not None and body.hyperparameters is not None:
        raise APIError(400, "invalid_request", "Give hyperparameters or method, not both.", param="method")
    if body.method is not None:
        return body.method.supervised.hyperparameters
    return body.hyperparameters or Hyperparameters()


def check_quota(session: Session, tenant: Tenant) -> None:
    """A 429 (with Retry-After) when the tenant already holds as many workers as its quota allows."""
    active = session.scalars(
        select(Job).where(Job.tenant_id == tenant.id, Job.status.in_(ACTIVE_JOB_STATUSES))
    ).all()
    if len(active) >= tenant.max_concurrent_jobs:
        raise APIError(
            429,
            "quota_exceeded",
            f"At most {tenant.max_concurrent_jobs} jobs may run at once.",
            headers={"Retry-After": str(retry_after(active))},
        )


def retry_after(active: Sequence[Job]) -> int:
    """Seconds until a slot may free: the soonest estimate among the running jobs, else a minute."""
    estimates = [(j.progress or {}).get("eta_seconds") for j in active]
    known = [int(e) + 1 for e in estimates if isinstance(e, int | float)]
    return max(1, min(known)) if known else 60


def starting_point(
    session: Session, tenant: Tenant, settings: ServiceSettings, model: str
) -> tuple[BaseModelRecord, Path | None]:
    """The base a job trains on, and the adapter it continues, if ``model`` names one of the tenant's
    released fine-tuned models or a checkpoint of the tenant's jobs (``ft:...:ckpt-step-N``), or one
    another tenant gave it permission to train from."""
    unavailable = APIError(400, "model_not_available", f"Model '{model}' is not available.", param="model")
    adapter = None
    if model.startswith("ft:"):
        if checkpoints.is_checkpoint_name(model):
            checkpoint = checkpoints.usable_by(session, settings.home, model, tenant.id)
            if checkpoint is None:
                raise unavailable
            adapter, base_id = checkpoint.adapter, checkpoint.job.model
        else:
            tuned = session.get(FineTunedModel, model)
            if tuned is None or tuned.tenant_id != tenant.id or tuned.quarantined:
                raise unavailable
            adapter, base_id = Path(tuned.path), tuned.base_model
        if not (adapter / ADAPTER_WEIGHTS).is_file():
            raise unavailable
    else:
        base_id = model
    base = session.get(BaseModelRecord, base_id)
    if base is None or base.status == BaseStatus.FAILED:
        raise unavailable
    return base, adapter


@router.post("", response_model=JobObject)
def create_job(
    body: CreateJob, request: Request, tenant: TenantDep, session: SessionDep, settings: SettingsDep
) -> JobObject:
    base, continues = starting_point(session, tenant, settings, body.model)
    files = [_usable_file(session, tenant, body.training_file, "training_file")]
    if body.validation_file:
        files.append(_usable_file(session, tenant, body.validation_file, "validation_file"))
    check_quota(session, tenant)
    # a file still in its pre-screen holds the job in validating_files (worker/prescreen.py queues it);
    # a base still aligning holds it in the queue (worker/alignment.py dispatches it once ready)
    validating = [f.id for f in files if f.status != FileStatus.PROCESSED]
    job = jobs.create(
        session,
        validating=validating,
        base_aligning=base.status in BASE_ALIGNING,
        tenant_id=tenant.id,
        model=base.id,
        continues=body.model if continues is not None else None,
        continues_path=str(continues) if continues is not None else None,
        training_file=body.training_file,
        validation_file=body.validation_file,
        hyperparameters=_hyperparameters(body).given(),
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else 42,
        user_metadata=body.metadata,
    )
    # a pre-screen that settled a file between the read above and this commit did not see the job
    ready = jobs.settle_validating(session, file_ids=[f.id for f in files]) if validating else [job.id]
    # likewise an alignment that ended in between: dispatching twice is harmless (a worker claims a job
    # once), never dispatching would leave the job queued
    session.refresh(base)
    if job.id in ready and base.status == BaseStatus.READY:
        request.app.state.dispatch(job.id)
    session.refresh(job)
    return JobObject.of(job, QueueState(session))


@router.get("", response_model=JobList)
def list_jobs(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """Newest first; ``metadata[key]=value`` query parameters keep the jobs whose metadata match."""
    wanted = {
        name[len("metadata[") : -1]: value
        for name, value in request.query_params.multi_items()
        if name.startswith("metadata[") and name.endswith("]")
    }
    query = select(Job).where(Job.tenant_id == tenant.id)
    if after:
        anchor = _owned(session, tenant, after)
        query = query.where(
            (Job.created_at < anchor.created_at)
            | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc())
    if wanted:  # metadata is JSON, whose query syntax differs between SQLite and PostgreSQL: filter here
        matching = (
            j
            for j in session.scalars(query)
            if all((j.user_metadata or {}).get(k) == v for k, v in wanted.items())
        )
        rows = [j for _, j in zip(range(limit + 1), matching, strict=False)]
    else:
        rows = list(session.scalars(query.limit(limit + 1)))
    queue = QueueState(session)
    return JobList(data=[JobObject.of(j, queue) for j in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}", response_model=JobObject)
def retrieve_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobObject:
    return JobObject.of(_owned(session, tenant, job_id), QueueState(session))


@router.post("/{job_id}/pause", response_model=JobObject)
def pause_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobObject:
    """A running job checkpoints between two steps and stops (pausing, then paused); a queued one is
    paused before it starts."""
    job = _owned(session, tenant, job_id)
    if not jobs.pause(session, job_id=job.id):
        session.refresh(job)
        raise APIError(409, "job_not_running", f"Job '{job_id}' cannot be paused ({job.status}).", param="id")
    session.refresh(job)
    return JobObject.of(job)


@router.post("/{job_id}/resume", response_model=JobObject)
def resume_job(job_id: str, request: Request, tenant: TenantDep, session: SessionDep) -> JobObject:
    """A paused job goes back in the queue and continues from its newest checkpoint."""
    job = _owned(session, tenant, job_id)
    not_paused = APIError(409, "job_not_paused", f"Job '{job_id}' is not paused ({job.status}).", param="id")
    if job.status != JobStatus.PAUSED:
        raise not_paused
    check_quota(session, tenant)
    if not jobs.resume(session, job_id=job.id):
        raise not_paused
    request.app.state.dispatch(job.id)
    session.refresh(job)
    return JobObject.of(job, QueueState(session))


@router.post("/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobObject:
    job = _owned(session, tenant, job_id)
    cancelled = jobs.cancel(session, job_id=job.id)
    session.refresh(job)
    if not cancelled:
        raise APIError(409, "job_not_active", f"Job '{job_id}' has already ended ({job.status}).", param="id")
    return JobObject.of(job)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    job_id: str,
    tenant: TenantDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> EventList:
    _owned(session, tenant, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        number = after.removeprefix("ftevent-")
        if not number.isdigit():
            raise APIError(400, "invalid_request", f"'{after}' is not an event id.", param="after")
        query = query.where(JobEvent.id < int(number))
    rows = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
    data = [
        EventObject(
            id=f"ftevent-{e.id}",
            created_at=epoch(e.created_at),
            level=e.level,
            message=e.message,
            data=e.data,
            type="metrics" if e.data and "step" in e.data else "message",
        )
        for e in rows[:limit]
    ]
    return EventList(data=data, has_more=len(rows) > limit)


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)
    fine_tuned_model_checkpoint: str


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    job_id: str,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CheckpointList:
    """The resumable checkpoints the job has written (adapter + trainer state), newest first, each with
    the metrics its step recorded; ``after`` a checkpoint id pages on to older ones."""
    job = _owned(session, tenant, job_id)
    root = jobs.job_dir(settings.home, job_id) / CHECKPOINTS_DIR
    steps = sorted(
        (int(p.name.removeprefix("step-")), p)
        for p in (root.glob("step-*") if root.is_dir() else [])
        if not p.name.endswith(".partial")
    )[::-1]
    if after is not None:
        prefix = f"ftckpt-{job_id}-step-"
        if not after.startswith(prefix) or not after.removeprefix(prefix).isdigit():
            raise APIError(
                400, "invalid_request", f"'{after}' is not a checkpoint id of this job.", param="after"
            )
        steps = [(step, path) for step, path in steps if step < int(after.removeprefix(prefix))]
    page = steps[:limit]
    metrics = step_metrics(session, job_id, {step for step, _ in page})
    data = [
        CheckpointObject(
            id=f"ftckpt-{job_id}-{path.name}",
            created_at=int(path.stat().st_mtime),
            fine_tuning_job_id=job_id,
            step_number=step,
            metrics=metrics.get(step, {"step": step}),
            fine_tuned_model_checkpoint=jobs.checkpoint_model_id(job, path.name),
        )
        for step, path in page
    ]
    return CheckpointList(
        data=data,
        has_more=len(steps) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def step_metrics(session: Session, job_id: str, steps: set[int]) -> dict[int, dict[str, Any]]:
    """What the job's progress events recorded at ``steps`` (OpenAI's names: step, train_loss, ...)."""
    found: dict[int, dict[str, Any]] = {}
    for event in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)):
        step = (event.data or {}).get("step")
        if step in steps:
            found[step] = {
                "step": step,
                "train_loss": event.data.get("train_loss"),
                **({"valid_loss": event.data["valid_loss"]} if "valid_loss" in event.data else {}),
            }
    return found
