"""``/v1/files``: upload, list, retrieve, download and delete fine-tuning files.

An upload streams to VACCINE_HOME/files in chunks under a size limit and is validated and parsed with the
library's rules at once (service/files.py; an invalid file is refused with every problem by line and
field); it is then ``uploaded``
until a worker's moderation pre-screen makes it ``processed`` (the flagged rows and their share are part
of the file object) or ``error`` (the policy rejects it; worker/prescreen.py).
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import APIError, not_found
from service import files
from service.models import File, Job, epoch, new_id
from service.storage import storage_error_code
from vaccine_core.formats import DatasetError

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)
CHUNK = 1 << 20


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    validation: dict[str, Any] | None = None
    prescreen: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: File) -> "FileObject":
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=epoch(row.created_at),
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
            validation=row.validation,
            prescreen=row.prescreen,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def _store(upload: UploadFile, target: Path, limit: int) -> int:
    """Copy the upload to ``target`` a chunk at a time; refuse it once it passes ``limit`` bytes. Nothing
    is left behind when it is refused or the disk cannot take it."""
    size = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413, "file_too_large", f"The file is larger than {limit} bytes.", param="file"
                    )
                out.write(chunk)
    except (APIError, OSError) as exc:
        target.unlink(missing_ok=True)
        refused = storage_refused(exc)
        if refused is None:
            raise
        raise refused from None
    return size


def storage_refused(exc: BaseException) -> APIError | None:
    """507 ``storage_full`` or 500 ``storage_unavailable`` for a write the disk refused; None for any other
    error (it is not the storage's)."""
    code = storage_error_code(exc)
    if code is None:
        return None
    status = 507 if code == "storage_full" else 500
    return APIError(status, code, f"The file could not be stored ({exc.strerror}); try again later.")


@router.post("", response_model=FileObject)
def upload_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> FileObject:
    if purpose not in PURPOSES:
        raise APIError(
            400, "invalid_purpose", f"purpose must be one of {', '.join(PURPOSES)}.", param="purpose"
        )
    file_id = new_id("file-")
    path = settings.files_dir / tenant.id / f"{file_id}.jsonl"
    used = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant.id))
    size = _store(file, path, min(settings.max_upload_bytes, tenant.max_storage_bytes - int(used or 0)))
    try:
        row = files.ingest(
            session,
            file_id=file_id,
            tenant_id=tenant.id,
            filename=file.filename or "upload.jsonl",
            purpose=purpose,
            path=path,
            size=size,
        )
    except DatasetError as exc:
        raise APIError(
            400, "invalid_file", str(exc), param="file", problems=[p.__dict__ for p in exc.problems]
        ) from None
    except OSError as exc:
        refused = storage_refused(exc)
        if refused is None:
            raise
        raise refused from None
    session.commit()
    request.app.state.dispatch_prescreen(file_id)
    session.refresh(row)  # a pre-screen run in process (tests, a single process) has already judged it
    return FileObject.of(row)


def _owned(session: SessionDep, tenant: TenantDep, file_id: str) -> File:
    row = session.get(File, file_id)
    if row is None or row.tenant_id != tenant.id:
        raise not_found("file", file_id)
    return row


@router.get("", response_model=FileList)
def list_files(
    tenant: TenantDep,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    query = select(File).where(File.tenant_id == tenant.id)
    if purpose:
        query = query.where(File.purpose == purpose)
    ordering = (File.created_at, File.id) if order == "asc" else (File.created_at.desc(), File.id.desc())
    if after:
        anchor = _owned(session, tenant, after)
        newer = (File.created_at > anchor.created_at) | (
            (File.created_at == anchor.created_at) & (File.id > anchor.id)
        )
        older = (File.created_at < anchor.created_at) | (
            (File.created_at == anchor.created_at) & (File.id < anchor.id)
        )
        query = query.where(newer if order == "asc" else older)
    rows = list(session.scalars(query.order_by(*ordering).limit(limit + 1)))
    data = [FileObject.of(r) for r in rows[:limit]]
    return FileList(
        data=data,
        has_more=len(rows) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, tenant: TenantDep, session: SessionDep) -> FileObject:
    return FileObject.of(_owned(session, tenant, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, tenant: TenantDep, session: SessionDep) -> FileResponse:
    row = _owned(session, tenant, file_id)
    media_type = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    return FileResponse(row.path, media_type=media_type, filename=row.filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, tenant: TenantDep, session: SessionDep) -> FileDeleted:
    row = _owned(session, tenant, file_id)
    users = session.scalars(
        select(Job.id).where((Job.training_file == file_id) | (Job.validation_file == file_id))
    ).all()
    if users:
        raise APIError(
            409,
            "file_in_use",
            f"File '{file_id}' is the data of fine-tuning job(s) {', '.join(users)}; it stays while they do.",
            param="file_id",
        )
    session.delete(row)
    session.commit()
    files.discard_contents(row)
    return FileDeleted(id=file_id)
