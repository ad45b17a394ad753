"""Hand-written hostile input (the generated cases are test_fuzz.py's): each gets a 4xx in the envelope,
names what is wrong, and leaves nothing behind."""

import asyncio
import threading

import openai
import pytest

from service.settings import get_service_settings
from tests.service_helpers import JOB_ROWS, jsonl, tenant_client, upload

CHUNK = 64 * 1024


def bad_upload(client: openai.OpenAI, content: bytes, name: str = "bad.jsonl") -> dict:
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=(name, content), purpose="fine-tune")
    assert list(client.files.list()) == []  # nothing kept
    return error.value.body


def test_broken_files_are_refused_by_line(service):
    client = tenant_client(service, "acme")
    rows = jsonl(JOB_ROWS[:3])
    not_utf8 = bad_upload(client, rows + b'{"instruction": "caf\xe9", "output": "x"}\n')
    assert not_utf8["code"] == "invalid_file" and "line 4" in not_utf8["message"]
    truncated = bad_upload(client, rows + b'{"instruction": "Say hel')
    assert "line 4" in truncated["message"]
    assert bad_upload(client, b"")["code"] == "invalid_file"
    assert bad_upload(client, b"\n\n  \n")["code"] == "invalid_file"
    wrong_types = bad_upload(client, rows + b'{"instruction": ["a"], "output": {"b": 1}}\n')
    assert "line 4, field 'instruction'" in wrong_types["message"]
    not_an_object = bad_upload(client, rows + b"[1, 2, 3]\n")
    assert "line 4" in not_an_object["message"]


def test_a_long_line_and_a_path_like_name_are_plain_data(service):
    client = tenant_client(service, "acme")
    long_row = {"instruction": "Summarise: " + "word " * 100_000, "output": "Words."}
    stored = client.files.create(
        file=("../../etc/passwd.jsonl", jsonl([long_row, *JOB_ROWS])), purpose="fine-tune"
    )
    assert stored.filename == "../../etc/passwd.jsonl"
    files_dir = get_service_settings().files_dir.resolve()
    on_disk = [p for p in files_dir.rglob("*") if p.is_file()]
    # named by id, under the files directory: the upload and its parsed rows
    assert sorted(p.name for p in on_disk) == [f"{stored.id}.jsonl", f"{stored.id}.parsed.jsonl"]
    assert client.files.content(stored.id).content.startswith(b'{"instruction": "Summarise: word')


def test_out_of_range_queries_are_400s(service):
    client = tenant_client(service, "acme")
    headers = {"Authorization": f"Bearer {client.api_key}"}
    for url in ("/v1/files?limit=100000000", "/v1/files?limit=-1", "/v1/fine_tuning/jobs?limit=abc"):
        answer = service.get(url, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", url
    for url in ("/v1/files?after=-1", "/v1/fine_tuning/jobs?after=ftjob-nope", "/v1/files/file-nope"):
        assert service.get(url, headers=headers).status_code == 404, url


def test_a_declared_oversized_upload_is_refused_before_a_byte_is_read(service, monkeypatch):
    monkeypatch.setenv("VACCINE_MAX_UPLOAD_BYTES", str(1024 * 1024))
    get_service_settings.cache_clear()
    read, status, body = stream_upload(service, declared=2 * 1024**3, total=2 * 1024**3)
    assert status == 413 and read == 0
    assert body["error"]["code"] == "file_too_large" and body["error"]["param"] == "file"


def test_a_streamed_oversized_upload_is_cut_off_at_the_limit(service, monkeypatch):
    """A chunked 2 GB upload (no Content-Length) is refused once it passes the limit: the server reads
    about the limit's worth of chunks, not the file, and nothing is stored."""
    limit = 1024 * 1024
    monkeypatch.setenv("VACCINE_MAX_UPLOAD_BYTES", str(limit))
    get_service_settings.cache_clear()
    read, status, body = stream_upload(service, declared=None, total=2 * 1024**3)
    assert status == 413 and body["error"]["code"] == "file_too_large"
    assert read * CHUNK < limit + 3 * CHUNK
    assert not [p for p in get_service_settings().files_dir.rglob("*") if p.is_file()]


def stream_upload(service, *, declared: int | None, total: int) -> tuple[int, int, dict]:
    """POST a multipart upload of ``total`` bytes to the app over ASGI, a chunk at a time as a client's
    socket would deliver it; how many chunks the app read, its status and its JSON body."""
    import json

    client = tenant_client(service, "acme")
    boundary = "vaccine-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    headers = [
        (b"authorization", f"Bearer {client.api_key}".encode()),
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
    ]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/files", "raw_path": b"/v1/files", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    chunks = total // CHUNK
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read += 1
        body = head if read == 1 else b'{"instruction": "x", "output": "y"}\n'.ljust(CHUNK, b" ")
        return {"type": "http.request", "body": body, "more_body": read < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(service.app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    chunks_read = read - 1 if declared is None else read  # the multipart head is not file content
    return chunks_read, status, json.loads(body)


def test_cancel_and_pause_at_once_leave_one_readable_state(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    answers: list[int] = []
    barrier = threading.Barrier(4)

    def act(action: str) -> None:
        barrier.wait()
        answer = service.post(
            f"/v1/fine_tuning/jobs/{job.id}/{action}", headers={"Authorization": f"Bearer {client.api_key}"}
        )
        answers.append(answer.status_code)

    threads = [threading.Thread(target=act, args=(a,)) for a in ("cancel", "pause", "cancel", "pause")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(code in (200, 400, 409) for code in answers) and 200 in answers, answers
    assert client.fine_tuning.jobs.retrieve(job.id).status in ("cancelled", "paused")
