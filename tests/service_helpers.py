"""Set-up shared by the service tests: migrated databases and an API client."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# a database of its own, never flushed: tests run in parallel and each uses keys and queues of its own
REDIS_URL = "redis://127.0.0.1:6379/15"


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


OPERATOR = {"Authorization": "Bearer operator-secret"}  # the admin key the `service` fixture sets


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


QUICKSTART = ROOT / "examples" / "quickstart.py"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class FirstStart:
    """`vaccine serve` (API and worker) on an empty VACCINE_HOME, and what it printed once."""

    url: str
    key: str
    operator_key: str
    env: dict[str, str]
    lines: list[str]

    def quickstart(self, cwd: Path) -> "subprocess.CompletedProcess[str]":
        """examples/quickstart.py as a user runs it (it waits for its job to end)."""
        return subprocess.run(
            [sys.executable, str(QUICKSTART)],
            env={**self.env, "VACCINE_KEY": self.key, "VACCINE_URL": f"{self.url}/v1"},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
        )


def wait_until_healthy(
    url: str, server: subprocess.Popen, output: Callable[[], str], timeout: float = 60
) -> float:
    """The moment ``url``'s /healthz first answers 200 (time.monotonic()); fails with the server's output
    when it exits first or does not answer within ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            time.sleep(0.2)
    exited = server.poll() is not None
    state = f"exited with {server.returncode}" if exited else f"did not answer in {timeout:.0f} s"
    raise AssertionError(f"the service {state}:\n{output()}")


@contextmanager
def first_start(home: Path, model_dir: Path, data_dir: Path, **extra_env: str) -> Iterator[FirstStart]:
    """The embedded default on the tiny model: a small alignment (8 pairs, 1 epoch), the refusal judge for
    the pre-screen, no operator key configured (the start makes one). The safety report's settings come
    from the caller's environment (``small_safety_evaluation``). Stopped on exit."""
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if name != "VACCINE_ADMIN_KEY"},
        "VACCINE_HOME": str(home),
        "VACCINE_DATA_DIR": str(data_dir),
        "VACCINE_DEFAULT_BASE_SOURCE": str(model_dir),
        "VACCINE_DEFAULT_ALIGNMENT_PAIRS": "8",
        "VACCINE_DEFAULT_ALIGNMENT_EPOCHS": "1",
        "VACCINE_PRESCREEN_JUDGE": "refusal",
        "VACCINE_PRESCREEN_ACTION": "warn",  # the refusal-phrase judge flags every non-refusal answer
        "VACCINE_RELEASE_FLAGGED_SHARE": "1",  # and the release gate does not read those flags
        **extra_env,
    }
    # the CLI through Python itself: a GPU machine may hold the project without its console scripts
    command = [sys.executable, "-c", "from api.cli import app; app()", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        key = operator_key = None
        while operator_key is None and (line := server.stdout.readline()):
            lines.append(line)
            if found := re.search(r"demo tenant key \(shown once\): (vk-\S+)", line):
                key = found.group(1)
            if found := re.search(r"operator key \(shown once; /admin and /console\): (vop-\S+)", line):
                operator_key = found.group(1)
        assert key is not None and operator_key is not None, "".join(lines)
        threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()  # keep it drained
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server, lambda: "".join(lines))
        yield FirstStart(url, key, operator_key, env, lines)
    finally:
        workers = child_pids(server.pid)
        server.terminate()
        server.wait(timeout=60)
        outlived = [pid for pid in workers if alive(pid)]
        for pid in outlived:  # never left running, even when the check below fails
            os.kill(pid, signal.SIGKILL)
    assert not outlived, f"vaccine serve left its worker running: {outlived}"


def proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, parent, ..., utime (11), stime (12)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc_stat(entry.name)[1]) == pid:
                children.append(int(entry.name))
        except OSError:
            continue
    return children


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


def token(page: str) -> str:
    """The console form token in a page."""
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(http: TestClient, key: str = "operator-secret"):
    """The console's sign-in form, posted with ``key``; the answer (a redirect once signed in)."""
    page = http.get("/console/login")
    return http.post("/console/login", data={"key": key, "csrf": token(page.text)}, follow_redirects=False)
