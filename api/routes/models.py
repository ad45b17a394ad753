"""``/v1/models``: the aligned bases and the tenant's fine-tuned models, and the adapter download."""

import base64
import hashlib
import io
import logging
import shutil
import tarfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import SessionDep, TenantDep
from api.errors import APIError, not_found
from service import checkpoints
from service.models import BaseModelRecord, BaseStatus, FineTunedModel, add_event, epoch
from vaccine_core.artifacts import verify_files

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/models", tags=["models"])
SYSTEM_OWNER = "vaccine"


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    base_model: str | None = None
    quarantined: bool | None = None
    safety_report: dict[str, Any] | None = None
    alignment: dict[str, Any] | None = None
    flagged_completions: int | None = None  # chat answers the output moderation replaced

    @classmethod
    def of_base(cls, record: BaseModelRecord) -> "ModelObject":
        return cls(
            id=record.id,
            created=epoch(record.created_at),
            owned_by=SYSTEM_OWNER,
            alignment=record.alignment,
            flagged_completions=record.flagged_completions,
        )

    @classmethod
    def of_tuned(cls, record: FineTunedModel) -> "ModelObject":
        return cls(
            id=record.id,
            created=epoch(record.created_at),
            owned_by=record.tenant_id,
            base_model=record.base_model,
            quarantined=record.quarantined,
            safety_report=record.safety_report,
            flagged_completions=record.flagged_completions,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _find(session: SessionDep, tenant: TenantDep, model_id: str) -> BaseModelRecord | FineTunedModel:
    tuned = session.get(FineTunedModel, model_id)
    if tuned is not None and tuned.tenant_id == tenant.id:
        return tuned
    base = session.get(BaseModelRecord, model_id)
    if base is not None and base.status == BaseStatus.READY:
        return base
    raise not_found("model", model_id)


@router.get("", response_model=ModelList)
def list_models(tenant: TenantDep, session: SessionDep) -> ModelList:
    bases = session.scalars(select(BaseModelRecord).where(BaseModelRecord.status == BaseStatus.READY))
    tuned = session.scalars(select(FineTunedModel).where(FineTunedModel.tenant_id == tenant.id))
    return ModelList(data=[ModelObject.of_base(b) for b in bases] + [ModelObject.of_tuned(t) for t in tuned])


@router.get("/{model_id:path}/content")
def download_adapter(model_id: str, tenant: TenantDep, session: SessionDep) -> StreamingResponse:
    """A .tar.gz of the PEFT adapter, its manifest.json (every file's sha256) and its safety_report.json;
    the files are checked against the manifest first, and the archive's own sha256 is in Repr-Digest."""
    record = _find(session, tenant, model_id)
    if not isinstance(record, FineTunedModel):
        raise APIError(400, "not_downloadable", "Only fine-tuned adapters can be downloaded.", param="model")
    if record.quarantined:
        raise APIError(
            403, "quarantined", "This model failed the release gate and awaits an operator's review."
        )
    run_dir = Path(record.path)
    if changed := verify_files(run_dir):  # a disk or a hand changed them since training: never served
        log.error("model %s: files differ from their manifest's sha256: %s", model_id, ", ".join(changed))
        raise APIError(
            500,
            "artifact_corrupted",
            f"The model's stored files no longer match their checksums ({', '.join(changed)}); "
            "it is not served until an operator restores it.",
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(run_dir.iterdir()):
            if path.is_file():  # the adapter, tokenizer, manifest and report; not the checkpoints
                archive.add(path, arcname=f"{record.job_id}/{path.name}")
    digest = base64.b64encode(hashlib.sha256(buffer.getbuffer()).digest()).decode()
    buffer.seek(0)
    filename = f"{record.job_id}-adapter.tar.gz"
    return StreamingResponse(
        buffer,
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Repr-Digest": f"sha-256=:{digest}:",  # RFC 9530: the client checks what it received
        },
    )


@router.get("/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, tenant: TenantDep, session: SessionDep) -> ModelObject:
    record = _find(session, tenant, model_id)
    return ModelObject.of_tuned(record) if isinstance(record, FineTunedModel) else ModelObject.of_base(record)


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


@router.delete("/{model_id:path}", response_model=DeletedModel)
def delete_model(model_id: str, tenant: TenantDep, session: SessionDep) -> DeletedModel:
    """A tenant deletes its own fine-tuned model (adapter files and all). A base is not the tenant's to
    delete, and a quarantined model awaits the operator's review (who may delete it from /admin)."""
    record = _find(session, tenant, model_id)
    if not isinstance(record, FineTunedModel):
        raise APIError(
            403, "not_owner", "Base models belong to the service; only fine-tuned ones can be deleted."
        )
    if record.quarantined:
        raise APIError(
            403, "quarantined", "This model awaits an operator's review; it cannot be deleted yet."
        )
    add_event(session, record.job_id, f"Model {model_id} deleted by its owner")
    checkpoints.revoke_all(session, job_id=record.job_id)  # the checkpoints go with the model's files
    session.delete(record)
    session.commit()
    shutil.rmtree(Path(record.path), ignore_errors=True)  # after the commit: a failed commit keeps the files
    return DeletedModel(id=model_id, deleted=True)
