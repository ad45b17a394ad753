"""A job's checkpoints by name (``ft:<base>:<suffix>:<job id>:ckpt-step-N``), who may continue training
from one, and the permissions that share one with another tenant (OpenAI's checkpoint permissions)."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service import jobs
from service.models import CheckpointPermission, Job, Tenant
from vaccine_core.artifacts import ADAPTER_WEIGHTS, CHECKPOINTS_DIR

MARKER = ":ckpt-"
STEP = re.compile(r"step-\d+")


@dataclass(frozen=True)
class Checkpoint:
    name: str  # its fine_tuned_model_checkpoint
    job: Job
    adapter: Path  # the saved adapter and trainer state


def is_checkpoint_name(model: str) -> bool:
    return model.startswith("ft:") and MARKER in model


def find(session: Session, home: Path, name: str) -> Checkpoint | None:
    """The checkpoint ``name`` stands for, or None when no job of that name wrote it (the step part is a
    step, never a path)."""
    if not is_checkpoint_name(name):
        return None
    head, _, step = name.rpartition(MARKER)
    job = session.get(Job, head.rsplit(":", 1)[-1])
    if job is None or not STEP.fullmatch(step) or jobs.checkpoint_model_id(job, step) != name:
        return None
    adapter = jobs.job_dir(home, job.id) / CHECKPOINTS_DIR / step
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        return None
    return Checkpoint(name=name, job=job, adapter=adapter)


def usable_by(session: Session, home: Path, name: str, tenant_id: str) -> Checkpoint | None:
    """The checkpoint, when ``tenant_id`` owns its job or was given permission to train from it."""
    checkpoint = find(session, home, name)
    if checkpoint is None:
        return None
    if checkpoint.job.tenant_id == tenant_id or permission_of(session, name=name, tenant_id=tenant_id):
        return checkpoint
    return None


def permission_of(session: Session, *, name: str, tenant_id: str) -> CheckpointPermission | None:
    return session.scalar(
        select(CheckpointPermission).where(
            CheckpointPermission.checkpoint == name, CheckpointPermission.tenant_id == tenant_id
        )
    )


class UnknownTenants(ValueError):
    def __init__(self, ids: Sequence[str]):
        self.ids = list(ids)
        super().__init__(f"no project (tenant) with id {', '.join(repr(i) for i in ids)}")


def grant(
    session: Session, *, checkpoint: Checkpoint, tenant_ids: Sequence[str]
) -> list[CheckpointPermission]:
    """Let each of ``tenant_ids`` train from ``checkpoint`` (a grant that exists is returned as it is);
    raises UnknownTenants, naming every id that is no tenant, before anything is written. Commits."""
    wanted = list(dict.fromkeys(tenant_ids))
    known = set(session.scalars(select(Tenant.id).where(Tenant.id.in_(wanted))))
    if unknown := [i for i in wanted if i not in known]:
        raise UnknownTenants(unknown)
    permissions = []
    for tenant_id in wanted:
        permission = permission_of(session, name=checkpoint.name, tenant_id=tenant_id)
        if permission is None:
            permission = CheckpointPermission(
                checkpoint=checkpoint.name, job_id=checkpoint.job.id, tenant_id=tenant_id
            )
            session.add(permission)
        permissions.append(permission)
    session.commit()
    return permissions


def revoke(session: Session, *, name: str, permission_id: str) -> bool:
    """Delete one permission of checkpoint ``name``; whether there was one. Commits."""
    removed = session.execute(
        delete(CheckpointPermission).where(
            CheckpointPermission.id == permission_id, CheckpointPermission.checkpoint == name
        )
    ).rowcount
    session.commit()
    return bool(removed)


def revoke_all(session: Session, *, job_id: str) -> None:
    """Every permission on a job's checkpoints (its files are being deleted); the caller commits."""
    session.execute(delete(CheckpointPermission).where(CheckpointPermission.job_id == job_id))
