"""The service's database tables (SQLAlchemy 2). Alembic migrations are generated from this metadata."""

import secrets
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

GiB = 1 << 30


def now() -> datetime:
    return datetime.now(UTC)


def epoch(moment: datetime | None) -> int | None:
    """Unix seconds, as the OpenAI API writes times."""
    return int(moment.timestamp()) if moment is not None else None


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tenant-"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer, default=2)
    max_storage_bytes: Mapped[int] = mapped_column(BigInteger, default=10 * GiB)
    defenses: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # None: the policy's defense stack
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    keys: Mapped[list["ApiKey"]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """A tenant's bearer key. Only its sha256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key-"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # enough to recognise a key in a list
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class JobStatus(StrEnum):
    """A fine-tuning job's life (OpenAI's names): queued -> running -> succeeded | failed | cancelled; a
    pause takes a running job through pausing (it checkpoints between two steps) to paused, and a resume
    queues it again to continue from that checkpoint."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# holding (or waiting for) a worker: what a tenant's concurrency quota counts
ACTIVE_JOB_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING)
CANCELLABLE_JOB_STATUSES = (*ACTIVE_JOB_STATUSES, JobStatus.PAUSED)
TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class BaseStatus(StrEnum):
    """A base model's life: registered -> aligning -> ready | failed."""

    REGISTERED = "registered"
    ALIGNING = "aligning"
    READY = "ready"
    FAILED = "failed"


# a base on its way to ready: jobs on it wait in the queue, and its alignment dispatches them
BASE_ALIGNING = (BaseStatus.REGISTERED, BaseStatus.ALIGNING)


class FileStatus(StrEnum):
    """uploaded (its structure is valid) -> processed | error, once a worker's moderation pre-screen has
    judged it; an upload whose structure is invalid is refused (400) and never stored."""

    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


class File(Base):
    """An uploaded fine-tuning file: stored under VACCINE_HOME/files, validated and pre-screened on upload."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file-"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # FileStatus
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    validation: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # examples, format
    prescreen: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # judge, flagged rows and share
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # when its pre-screen was last handed to the broker (service/redispatch.py sends a lost one again)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# A base's alignment method when it was aligned elsewhere (a `vaccine align` run directory): adopted as it is.
ADOPT = "aligned"


class BaseModelRecord(Base):
    """A base model users fine-tune from: registered by an operator, aligned (Vaccine or SFT) once."""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)  # the name users pass as `model`
    source: Mapped[str] = mapped_column(Text)  # model spec: 'default', a .gguf file or a directory
    status: Mapped[str] = mapped_column(String(16), default=BaseStatus.REGISTERED)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the alignment run's directory
    alignment: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # method, rho, data, epochs
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # harmful score, over-refusal
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # alignment step, loss, eta
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    flagged_completions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # when its alignment was last handed to the broker (service/redispatch.py sends a lost one again)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """A fine-tuning job. The database, not the queue, is the source of truth for its state."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftjob-"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(ForeignKey("base_models.id"))  # the base it trains on
    # the tenant's fine-tuned model or checkpoint it continues training (as the user named it), and where
    continues: Mapped[str | None] = mapped_column(String(300), nullable=True)
    continues_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    training_file: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=42)
    user_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    # validating_files | queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {code, message, param}
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # last step, loss, eta
    result_files: Mapped[list | None] = mapped_column(JSON, nullable=True)  # file ids: the step metrics
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # when a queued job was last handed to the broker: a broker that lost its messages (Redis restarted
    # without persistence) is answered by sending the job again (service.jobs.redispatch_lost)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # step, loss, learning rate, percent, eta
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class FineTunedModel(Base):
    """A job's result: the adapter directory and its safety report; quarantined ones cannot be downloaded."""

    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    base_model: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    path: Mapped[str] = mapped_column(Text)
    safety_report: Mapped[dict] = mapped_column(JSON)
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)
    # chat completions the output moderation replaced by a refusal (policy.moderate_chat)
    flagged_completions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class CheckpointPermission(Base):
    """Another tenant may continue training from one of a job's checkpoints (OpenAI's checkpoint
    permissions, a tenant standing for a project). Only starting a job from it is shared: the checkpoint
    never passed the release gate, and the grantee's own job is scored before anything is released."""

    __tablename__ = "checkpoint_permissions"
    __table_args__ = (UniqueConstraint("checkpoint", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cp_"))
    checkpoint: Mapped[str] = mapped_column(String(300), index=True)  # its fine_tuned_model_checkpoint
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))  # the grantee
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def add_event(
    session: Session, job_id: str, message: str, data: dict | None = None, level: str = "info"
) -> None:
    session.add(JobEvent(job_id=job_id, message=message, data=data, level=level))


class AuditEntry(Base):
    """Every operator decision: who, what, on which object, and the details."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Policy(Base):
    """The operator's safety policy: one row, created from the settings' defaults on first read."""

    __tablename__ = "policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    harmful_score_threshold: Mapped[float] = mapped_column(Float)
    eval_prompts_file: Mapped[str] = mapped_column(Text)  # "": protocol v2's harmful prompts
    eval_prompts: Mapped[int] = mapped_column(Integer)  # harmful prompts the safety report asks
    harmless_prompts: Mapped[int] = mapped_column(Integer)  # over-refusal on harmless prompts
    borderline_prompts: Mapped[int] = mapped_column(
        Integer
    )  # over-refusal where a request only sounds harmful
    eval_samples: Mapped[int] = mapped_column(Integer)  # sampled answers per prompt, beside the greedy one
    degenerate_threshold: Mapped[float] = mapped_column(Float)  # % of harmless answers degenerate: refused
    prescreen_action: Mapped[str] = mapped_column(String(8))  # warn | reject
    prescreen_threshold: Mapped[float] = mapped_column(Float)  # share of flagged rows that triggers it
    # the release gate quarantines a model whose training file had more than this share of rows flagged
    release_flagged_share: Mapped[float] = mapped_column(Float, default=0.5, server_default="0.5")
    defenses: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # service.defenses.DefenseStack
    # every chat completion passes the safety judge; a flagged answer is replaced by a refusal
    moderate_chat: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class IdempotentResponse(Base):
    """The stored answer to a POST sent with an Idempotency-Key, replayed when the same request repeats."""

    __tablename__ = "idempotent_responses"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the caller's credentials
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))  # method, path and body
    status_code: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
