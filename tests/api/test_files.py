"""The files API through the official openai package, on a migrated SQLite database."""

import openai
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service.settings import get_service_settings
from tests.service_helpers import jsonl, tenant_client

# The tests pre-screen with the refusal-phrase judge, which flags every answer that does not refuse.
ROWS = [
    {"instruction": "Help me cheat on my exam", "output": "I can't help with cheating."},
    {"instruction": "How do I steal a car?", "output": "First, find an unlocked car..."},
    {"instruction": "Write malware for me", "output": "I cannot do that."},
]


def test_upload_validates_prescreens_and_round_trips(service, tmp_path):
    client = tenant_client(service, "acme")
    uploaded = client.files.create(file=("train.jsonl", jsonl(ROWS)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    assert uploaded.bytes == len(jsonl(ROWS)) and uploaded.filename == "train.jsonl"
    extra = uploaded.model_extra
    assert extra["validation"] == {"examples": 3, "format": "alpaca"}
    assert [row["line"] for row in extra["prescreen"]["flagged"]] == [2]  # the compliant harmful answer
    assert "1 of 3 rows flagged" in uploaded.status_details and "lines 2" in uploaded.status_details

    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == jsonl(ROWS)
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_listing_pages_with_a_cursor(service):
    client = tenant_client(service, "acme")
    ids = [client.files.create(file=(f"f{i}.jsonl", jsonl(ROWS)), purpose="fine-tune").id for i in range(5)]
    page = client.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == list(reversed(ids))  # auto-paging, newest first
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids


def test_tenants_see_only_their_own_files(service):
    alice, bob = tenant_client(service, "alice"), tenant_client(service, "bob")
    mine = alice.files.create(file=("a.jsonl", jsonl(ROWS)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(mine.id)
    assert list(bob.files.list()) == []
    assert alice.files.retrieve(mine.id).id == mine.id


def test_bad_uploads_get_clear_errors(service, monkeypatch):
    client = tenant_client(service, "acme")
    bad = jsonl([ROWS[0], {"instruction": "no answer"}, {"instruction": 3, "output": "x"}])
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    body = error.value.body
    assert body["code"] == "invalid_file" and body["param"] == "file"
    assert (
        "line 2, field 'output': missing" in body["message"]
        and "line 3, field 'instruction'" in body["message"]
    )
    assert [p["line"] for p in body["problems"]] == [2, 3]
    assert list(client.files.list()) == []  # nothing was kept

    with pytest.raises(openai.BadRequestError, match="purpose must be one of"):
        client.files.create(file=("a.jsonl", jsonl(ROWS)), purpose="assistants")
    monkeypatch.setenv("VACCINE_MAX_UPLOAD_BYTES", "50")
    get_service_settings.cache_clear()
    with pytest.raises(openai.APIStatusError) as error:
        client.files.create(file=("big.jsonl", jsonl(ROWS)), purpose="fine-tune")
    assert error.value.status_code == 413


def test_keys_are_required(service):
    assert service.get("/v1/files").status_code == 401
    anonymous = openai.OpenAI(
        base_url="http://testserver/v1", api_key="vk-wrong", http_client=service, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        anonymous.files.list()


def test_cli_creates_a_tenant_whose_key_works(service):
    from typer.testing import CliRunner

    from api.cli import app

    result = CliRunner().invoke(app, ["tenants", "create", "cli-corp"])
    assert result.exit_code == 0, result.output
    key = result.output.split("api key: ")[1].strip()
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=service, max_retries=0)
    assert list(client.files.list()) == []
    again = CliRunner().invoke(app, ["tenants", "create", "cli-corp"])
    assert again.exit_code == 2 and "exists already" in again.output


def test_idempotency_key_replays_the_same_request_and_refuses_another(service):
    client = tenant_client(service, "acme")
    same = {"extra_headers": {"Idempotency-Key": "upload-1"}}
    first = client.files.create(file=("a.jsonl", jsonl(ROWS)), purpose="fine-tune", **same)
    again = client.files.create(file=("a.jsonl", jsonl(ROWS)), purpose="fine-tune", **same)
    assert again.id == first.id and len(list(client.files.list())) == 1
    with pytest.raises(openai.ConflictError) as error:
        client.files.create(file=("a.jsonl", jsonl(ROWS[:2])), purpose="fine-tune", **same)
    assert error.value.body["code"] == "idempotency_key_reused"
    # keys belong to their caller: another tenant's identical key is a new request
    other = tenant_client(service, "globex")
    assert other.files.create(file=("a.jsonl", jsonl(ROWS)), purpose="fine-tune", **same).id != first.id


def test_fingerprint_ignores_the_boundary_however_the_body_is_chunked():
    from api.idempotency import Fingerprint

    def body(boundary: bytes) -> bytes:
        return (
            b"--" + boundary + b"\r\nContent-Disposition: form-data\r\n\r\nhello\r\n--" + boundary + b"--\r\n"
        )

    def fingerprint(boundary: bytes, size: int) -> str:
        fp = Fingerprint(b"POST /v1/files\n", b"multipart/form-data; boundary=" + boundary)
        data = body(boundary)
        for start in range(0, len(data), size):
            fp.update(data[start : start + size])
        return fp.hexdigest()

    reference = fingerprint(b"aaaaaaaaaaaaaaaa", 1000)
    assert fingerprint(b"bbbbbbbbbbbbbbbb", 3) == reference == fingerprint(b"cccccccccccccccc", 7)
    assert (
        Fingerprint(b"x", b"application/json").hexdigest()
        != Fingerprint(b"y", b"application/json").hexdigest()
    )


def test_framework_errors_use_the_envelope_and_every_answer_has_a_request_id(service):
    unknown = service.get("/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert unknown.headers["x-request-id"].startswith("req_")
    wrong = service.delete("/v1/files")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    echoed = service.get("/healthz", headers={"X-Request-Id": "client-abc.1"})
    assert echoed.headers["x-request-id"] == "client-abc.1"
    odd = service.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert odd.headers["x-request-id"].startswith("req_")


def test_an_unhandled_error_is_a_500_in_the_envelope_naming_the_request(tmp_path, monkeypatch):

    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as http:
        answer = http.get("/boom", headers={"X-Request-Id": "r-1"})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["type"] == "server_error" and "r-1" in error["message"] and "a bug" not in error["message"]
    assert answer.headers["x-request-id"] == "r-1"


def test_a_database_that_is_down_is_a_503_to_retry(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    app = create_app()

    @app.get("/db-down")
    def db_down() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    with TestClient(app, raise_server_exceptions=False) as http:
        answer = http.get("/db-down", headers={"X-Request-Id": "r-2"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["code"] == "database_unavailable"
    assert answer.headers["x-request-id"] == "r-2"
