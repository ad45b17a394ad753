"""`vaccine serve` on an empty VACCINE_HOME answers in seconds: nothing trains before the API is up, and a
quickstart job created at once succeeds once the worker has aligned the base."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.settings import ServiceSettings
from tests.service_helpers import first_start, free_port, small_safety_evaluation, wait_until_healthy

FIRST_ANSWER_SECONDS = 10
DEFAULT_BASE = ServiceSettings.model_fields["default_base_name"].default


def test_a_first_start_answers_within_ten_seconds(tmp_path, tiny_model_dir):
    port = free_port()
    env = {
        **os.environ,
        "VACCINE_HOME": str(tmp_path / "home"),
        "VACCINE_DEFAULT_BASE_SOURCE": str(tiny_model_dir),
        "VACCINE_ADMIN_KEY": "operator-secret",
    }
    started = time.monotonic()
    command = [str(Path(sys.executable).parent / "vaccine"), "serve", "--no-worker", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path.cwd()
    )
    try:

        def output() -> str:  # read only once it has exited: a running server's pipe would block the read
            return server.stdout.read() if server.poll() is not None else "(still running)"

        answered = wait_until_healthy(f"http://127.0.0.1:{port}", server, output) - started
        print(f"first answer after {answered:.1f} s")
        assert answered <= FIRST_ANSWER_SECONDS, f"first answer after {answered:.1f} s"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["warming_up"][f"base:{DEFAULT_BASE}"]["status"] == "registered"
        bases = httpx.get(
            f"http://127.0.0.1:{port}/admin/models", headers={"Authorization": "Bearer operator-secret"}
        ).json()["data"]
        assert [b["status"] for b in bases] == ["registered"]  # the worker aligns it; the API did not wait
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert re.search(r"demo tenant key \(shown once\): vk-", output)


def test_a_quickstart_job_made_at_first_start_succeeds_once_the_base_is_ready(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    small_safety_evaluation(monkeypatch, tmp_path)  # the report's settings, read by the worker
    with first_start(tmp_path / "home", tiny_model_dir, tiny_data_dir) as started:
        operator = {"Authorization": f"Bearer {started.operator_key}"}  # none was configured: it made one
        assert httpx.get(f"{started.url}/admin/workers", headers=operator).status_code == 200
        warming = httpx.get(f"{started.url}/readyz").json()["warming_up"]  # nothing aligned yet
        assert warming[f"base:{DEFAULT_BASE}"]["status"] in {"registered", "aligning"}
        quickstart = started.quickstart(tmp_path)  # the example as a user runs it, at once
    assert re.search(r"created ftjob-\S+ \((validating_files|queued)\)", quickstart.stdout), quickstart.stdout
    assert ": succeeded; model ft:" in quickstart.stdout, quickstart.stdout + quickstart.stderr
    assert list(tmp_path.glob("ftjob-*-adapter.tar.gz"))  # downloaded, as the example does


def test_a_setting_out_of_bounds_stops_serve_before_it_starts_anything_and_names_the_variable(
    tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from api.cli import app
    from service.settings import get_service_settings

    monkeypatch.setenv("VACCINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VACCINE_RELEASE_FLAGGED_SHARE", "2")
    monkeypatch.setenv("VACCINE_MAX_ATTEMPTS", "0")
    get_service_settings.cache_clear()
    result = CliRunner().invoke(app, ["serve", "--no-worker"])
    assert result.exit_code == 2
    assert "VACCINE_RELEASE_FLAGGED_SHARE='2': Input should be less than or equal to 1" in result.output
    assert "VACCINE_MAX_ATTEMPTS='0'" in result.output
    assert not (tmp_path / "home").exists()  # no database, no key: nothing was started
