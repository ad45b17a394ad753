"""What a broker restarted without persistence forgets besides jobs: an upload's pre-screen and a base's
alignment are sent again once they have waited long after their last send, once per sweep."""

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import bases, files
from service.bases import AlignmentPlan
from service.db import get_engine
from service.models import ApiKey, FileStatus, new_id, now
from service.redispatch import lost_alignments, lost_prescreens
from service.settings import get_service_settings
from service.tenants import hash_key
from tests.service_helpers import JOB_ROWS, jsonl, tenant_client
from worker.prescreen import prescreen_file


def stored_upload(tenant_id: str) -> str:
    """An upload accepted while its pre-screen's message is lost (nothing ran it)."""
    file_id = new_id("file-")
    path = get_service_settings().files_dir / tenant_id / f"{file_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl(JOB_ROWS))
    with Session(get_engine()) as session:
        files.ingest(
            session, file_id=file_id, tenant_id=tenant_id, filename="t.jsonl", purpose="fine-tune",
            path=path, size=path.stat().st_size,
        )  # fmt: skip
        session.commit()
    return file_id


def test_an_upload_whose_prescreen_was_lost_is_screened_after_a_second_send(service):
    file_id = stored_upload(tenant_of(tenant_client(service, "acme")))
    with Session(get_engine()) as session:
        assert lost_prescreens(session, sent_before=now() - timedelta(minutes=30)) == []  # just sent
        assert lost_prescreens(session, sent_before=now() + timedelta(seconds=1)) == [file_id]
        assert lost_prescreens(session, sent_before=now() - timedelta(seconds=5)) == []  # stamped: once
    assert prescreen_file(file_id, dispatch=lambda job_id: None) == FileStatus.PROCESSED
    with Session(get_engine()) as session:
        assert lost_prescreens(session, sent_before=now() + timedelta(seconds=1)) == []  # screened


def test_a_base_whose_alignment_was_lost_is_sent_again_until_a_worker_starts_it(service, tiny_model_dir):
    with Session(get_engine()) as session:
        bases.register(session, name="lost", source=str(tiny_model_dir), plan=AlignmentPlan(method="sft"))
        assert lost_alignments(session, sent_before=now() - timedelta(minutes=30)) == []
        assert lost_alignments(session, sent_before=now() + timedelta(seconds=1)) == ["lost"]
        assert lost_alignments(session, sent_before=now() - timedelta(seconds=5)) == []
        assert bases.start_aligning(session, base_id="lost")
        assert lost_alignments(session, sent_before=now() + timedelta(seconds=1)) == []


def test_the_reaper_sends_lost_prescreens_and_alignments_through_the_worker_s_app(
    service, tiny_model_dir, monkeypatch
):
    import worker.celery_app as celery_app

    monkeypatch.setenv("VACCINE_REDISPATCH_AFTER_SECONDS", "0")
    get_service_settings.cache_clear()
    client = tenant_client(service, "acme")
    file_id = stored_upload(tenant_of(client))
    with Session(get_engine()) as session:
        bases.register(session, name="lost", source=str(tiny_model_dir), plan=AlignmentPlan(method="sft"))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(celery_app, "dispatch_prescreen", lambda i: sent.append(("prescreen", i)))
    monkeypatch.setattr(celery_app, "dispatch_alignment", lambda i: sent.append(("align", i)))
    reaped = celery_app.reap(get_service_settings())
    assert ("prescreen", file_id) in sent and ("align", "lost") in sent
    assert file_id in reaped and "lost" in reaped


def tenant_of(client) -> str:
    with Session(get_engine()) as session:
        return session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(client.api_key)))
