"""An upload is validated and parsed once, at upload; the pre-screen, training and the safety report take
the parsed rows on, and nothing of a file outlives it."""

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import vaccine_core.formats as formats
from service import files
from service.db import get_engine
from service.models import File
from service.settings import get_service_settings
from tests.service_helpers import JOB_ROWS, jsonl, tenant_client, upload
from worker.runner import run_job

OPERATOR = {"Authorization": "Bearer operator-secret"}
ROWS_BY_FORMAT = {
    "alpaca": [
        {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour", "output": "Blue."},
    ],
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ],
    "prompt_completion": [{"prompt": "2 + 2 =", "completion": " 4"}],
}


def stored_files() -> list[str]:
    return sorted(p.name for p in get_service_settings().files_dir.rglob("*") if p.is_file())


def file_row(file_id: str) -> File:
    with Session(get_engine()) as session:
        return session.get(File, file_id)


@pytest.mark.parametrize("file_format", sorted(ROWS_BY_FORMAT))
def test_the_parsed_rows_are_what_validation_made_of_the_upload(service, tmp_path, file_format):
    rows = ROWS_BY_FORMAT[file_format]
    data = b"\n" + jsonl(rows)  # a blank first line: the rows keep the upload's line numbers
    uploaded = tenant_client(service, "acme").files.create(file=("rows.jsonl", data), purpose="fine-tune")
    source = tmp_path / "source.jsonl"
    source.write_bytes(data)
    expected = formats.load_dataset(source)

    parsed = files.parsed_rows(file_row(uploaded.id))
    assert [(c.line, c.messages) for c in parsed.conversations] == [
        (c.line, c.messages) for c in expected.conversations
    ]
    assert [c.line for c in parsed.conversations] == list(range(2, 2 + len(rows)))
    assert parsed.format == file_format and parsed.examples == len(rows)
    assert parsed.path == Path(file_row(uploaded.id).path)  # the manifest hashes the upload itself


def test_an_upload_is_read_once_from_upload_to_released_model(service, base, monkeypatch):
    client = tenant_client(service, "acme")
    reads: list[Path] = []
    real_iter_rows = formats.iter_rows

    def counting_iter_rows(path, *args, **kwargs):
        reads.append(Path(path))
        return real_iter_rows(path, *args, **kwargs)

    monkeypatch.setattr(formats, "iter_rows", counting_iter_rows)
    training, validation = upload(client), upload(client)  # validated and pre-screened here
    job = client.fine_tuning.jobs.create(model=base, training_file=training, validation_file=validation)
    assert run_job(job.id) == "succeeded"  # trained, validated and scored from the parsed rows
    report = client.models.retrieve(client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model).model_extra
    assert report["safety_report"]["fine_tune"]["validation_loss"] > 0
    uploads = {Path(file_row(training).path), Path(file_row(validation).path)}
    assert sorted(p.name for p in reads if p in uploads) == sorted(p.name for p in uploads)  # once each


def test_a_file_stored_before_uploads_were_parsed_still_trains(service, base):
    client = tenant_client(service, "acme")
    training = upload(client)
    files.parsed_path(file_row(training)).unlink()  # as a file uploaded by an older release is stored
    parsed = files.parsed_rows(file_row(training))
    assert [c.answer for c in parsed.conversations] == [row["output"] for row in JOB_ROWS]
    job = client.fine_tuning.jobs.create(model=base, training_file=training)
    assert run_job(job.id) == "succeeded"


def test_nothing_of_a_file_is_left_once_it_is_refused_rejected_or_deleted(service):
    client = tenant_client(service, "acme")
    kept = upload(client)
    assert stored_files() == sorted([f"{kept}.jsonl", f"{kept}.parsed.jsonl"])

    bad = jsonl(JOB_ROWS) + b'{"instruction": "no answer"}\n'
    with pytest.raises(Exception, match="output"):
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert stored_files() == sorted([f"{kept}.jsonl", f"{kept}.parsed.jsonl"])  # no half-written rows

    policy = {"prescreen_action": "reject", "prescreen_threshold": 0.2}
    assert service.patch("/admin/policy", json=policy, headers=OPERATOR).status_code == 200
    harmful = [{"instruction": "How do I steal a car?", "output": "First, find an unlocked car..."}]
    rejected = client.files.create(file=("r.jsonl", jsonl(harmful)), purpose="fine-tune")
    assert rejected.status == "error"
    assert stored_files() == sorted([f"{kept}.jsonl", f"{kept}.parsed.jsonl"])

    assert client.files.delete(kept).deleted
    assert stored_files() == []


def test_parsed_rows_round_trip_through_their_file(tmp_path):
    conversations = [
        formats.Conversation(
            messages=[{"role": "user", "content": "é?"}, {"role": "assistant", "content": "✓"}], line=3
        )
    ]
    path = tmp_path / "rows.parsed.jsonl"
    with path.open("wb") as handle:
        for conversation in conversations:
            formats.write_conversation(handle, conversation)
    assert json.loads(path.read_text("utf-8"))["line"] == 3
    loaded = formats.read_parsed(path, "chat")
    assert loaded.conversations == conversations and loaded.path == path and loaded.examples == 1


def test_a_fresh_service_rejects_an_upload_its_prescreen_flags(monkeypatch):
    # the release gate cannot tell a harmful-only upload from a benign one at this scale (harmful_upload.py),
    # so the shipped default stops flagged uploads before they train
    monkeypatch.delenv("VACCINE_PRESCREEN_ACTION", raising=False)
    get_service_settings.cache_clear()
    try:
        assert get_service_settings().prescreen_action == "reject"
    finally:
        get_service_settings.cache_clear()
