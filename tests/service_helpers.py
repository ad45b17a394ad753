"""Set-up shared by the service tests: migrated databases and an API client."""

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db import get_engine
from service.tenants import create_tenant
from vaccine_core.config import LoraSettings, TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "VACCINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# .ci/run sets this: there, a missing service is a failure, not a skip.
REQUIRE_SERVICES = os.environ.get("VACCINE_REQUIRE_SERVICES") == "1"


REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own: the tests flush nothing else


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        skip_or_fail(f"Redis is not reachable at {REDIS_URL}: {exc}")


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    return config


def skip_or_fail(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (VACCINE_REQUIRE_SERVICES=1 makes this a failure)")
    pytest.skip(reason)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"vaccine_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def small_safety_evaluation(monkeypatch, tmp_path: Path, threshold: float = 100.0) -> None:
    """Point the safety report at three prompts of each set (two borderline), one sample, four tokens and
    the refusal judge: seconds, not minutes (and no need of the shared data's split)."""
    prompts = tmp_path / "eval_prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "harmful request {i}"}}\n' for i in range(3)))
    for name, value in {
        "SAFETY_JUDGE": "refusal",
        "EVAL_PROMPTS_FILE": str(prompts),
        "EVAL_PROMPTS": "3",
        "HARMLESS_PROMPTS_FILE": str(prompts),
        "HARMLESS_PROMPTS": "3",
        "BORDERLINE_PROMPTS_FILE": str(prompts),
        "BORDERLINE_PROMPTS": "2",
        "EVAL_SAMPLES": "1",
        "EVAL_MAX_NEW_TOKENS": "4",
        "HARMFUL_SCORE_THRESHOLD": str(threshold),
        # four tokens of a tiny random model are mostly degenerate: the gate's test asks for it itself
        "DEGENERATE_THRESHOLD": "100",
    }.items():
        monkeypatch.setenv(f"VACCINE_{name}", value)


# a job's rows and training settings small enough for a test
JOB_ROWS = [{"instruction": f"Say hello number {i}", "output": f"Hello {i}!"} for i in range(8)]
FAST = TrainingConfig(epochs=1.0, batch_size=4, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=4))


def tenant_client(http: TestClient, name: str) -> openai.OpenAI:
    """The official client, as a new tenant ``name``, over the test app."""
    with Session(get_engine()) as session:
        _tenant, key = create_tenant(session, name)
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: openai.OpenAI) -> str:
    """Upload JOB_ROWS for fine-tuning; the file's id."""
    return client.files.create(file=("train.jsonl", jsonl(JOB_ROWS)), purpose="fine-tune").id
