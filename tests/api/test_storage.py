"""Storage full or refusing writes: a clean error in the envelope or a failed job with a readable code,
nothing half-written left to serve, and the tenant's quota accounting unchanged."""

import errno
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import worker.runner as runner
from service.db import get_engine
from service.models import File, FineTunedModel
from service.settings import get_service_settings
from tests.service_helpers import JOB_ROWS, jsonl, tenant_client, upload
from worker.runner import run_job


class FullDisk:
    """A file handle that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk_under(directory: Path, monkeypatch, room: int = 100) -> None:
    real_open = Path.open

    def open_on_a_full_disk(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return FullDisk(handle, room) if "w" in mode and directory in self.parents else handle

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)


def stored_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def used_bytes() -> int:
    with Session(get_engine()) as session:
        return int(session.scalar(select(func.coalesce(func.sum(File.bytes), 0))))


def test_an_upload_onto_a_full_disk_is_a_507_and_leaves_nothing(service, monkeypatch):
    client = tenant_client(service, "acme")
    upload(client)
    before, files_dir = used_bytes(), get_service_settings().files_dir
    kept = stored_files(files_dir)
    fill_disk_under(files_dir, monkeypatch)
    with pytest.raises(openai.APIStatusError) as error:
        client.files.create(file=("rows.jsonl", jsonl(JOB_ROWS)), purpose="fine-tune")
    assert error.value.status_code == 507 and error.value.body["code"] == "storage_full"
    assert stored_files(files_dir) == kept  # the half-written file is gone
    assert used_bytes() == before and len(list(client.files.list())) == 1
    monkeypatch.undo()  # space again: the same upload goes through
    assert (
        client.files.create(file=("rows.jsonl", jsonl(JOB_ROWS)), purpose="fine-tune").status == "processed"
    )


def test_a_read_only_disk_is_a_500_storage_unavailable(service, monkeypatch):
    client = tenant_client(service, "acme")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(openai.InternalServerError) as error:
        client.files.create(file=("rows.jsonl", jsonl(JOB_ROWS)), purpose="fine-tune")
    assert error.value.body["code"] == "storage_unavailable"


def test_a_job_whose_artifacts_do_not_fit_fails_readably(service, base, monkeypatch):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))

    def finetune_onto_a_full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "finetune", finetune_onto_a_full_disk)
    assert run_job(job.id) == "failed"
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "storage_full" and "No space left" in failed.error.message


def test_a_full_disk_while_the_results_are_written_releases_nothing(service, base, monkeypatch):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    files_dir = get_service_settings().files_dir
    kept = stored_files(files_dir)
    real_write = Path.write_text

    def full_for_csv(self, text, *args, **kwargs):
        if self.suffix == ".csv":
            real_write(self, text[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_csv)
    assert run_job(job.id) == "failed"
    assert client.fine_tuning.jobs.retrieve(job.id).error.code == "storage_full"
    assert stored_files(files_dir) == kept  # no half-written result file
    with Session(get_engine()) as session:
        assert session.query(FineTunedModel).count() == 0
