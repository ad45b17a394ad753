"""`vaccine serve` on an empty VACCINE_HOME answers in seconds: nothing trains before the API is up, and a
quickstart job created at once succeeds once the worker has aligned the base."""

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.service_helpers import small_safety_evaluation

FIRST_ANSWER_SECONDS = 10
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
        answered = None
        while time.monotonic() - started < 60 and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    answered = time.monotonic() - started
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert answered is not None, server.stdout.read() if server.poll() is not None else "no answer"
        print(f"first answer after {answered:.1f} s")
        assert answered <= FIRST_ANSWER_SECONDS, f"first answer after {answered:.1f} s"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["warming_up"]["base:smollm2-135m-vaccine"]["status"] == "registered"
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
    small_safety_evaluation(monkeypatch, tmp_path)  # the report's settings, read by the worker below
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if name != "VACCINE_ADMIN_KEY"},
        "VACCINE_HOME": str(tmp_path / "home"),
        "VACCINE_DATA_DIR": str(tiny_data_dir),
        "VACCINE_DEFAULT_BASE_SOURCE": str(tiny_model_dir),
        "VACCINE_DEFAULT_ALIGNMENT_PAIRS": "8",
        "VACCINE_DEFAULT_ALIGNMENT_EPOCHS": "1",
        "VACCINE_PRESCREEN_JUDGE": "refusal",
    }
    command = [str(Path(sys.executable).parent / "vaccine"), "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path.cwd()
    )
    lines: list[str] = []
    try:
        key = operator_key = None
        while operator_key is None and (line := server.stdout.readline()):
            lines.append(line)
            if found := re.search(r"demo tenant key \(shown once\): (vk-\S+)", line):
                key = found.group(1)
            if found := re.search(r"operator key \(shown once; /admin and /console\): (vop-\S+)", line):
                operator_key = found.group(1)  # none was configured: the first start made one
        assert key is not None and operator_key is not None, "".join(lines)
        threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()  # keep it drained
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the API answers before the worker has aligned anything
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        operator = {"Authorization": f"Bearer {operator_key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/admin/workers", headers=operator).status_code == 200
        warming = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["warming_up"]
        assert warming["base:smollm2-135m-vaccine"]["status"] in {"registered", "aligning"}
        quickstart = subprocess.run(  # the example as a user runs it, at once: nothing special
            [sys.executable, str(QUICKSTART)],
            env={**env, "VACCINE_KEY": key, "VACCINE_URL": f"http://127.0.0.1:{port}/v1"},
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
        assert re.search(r"created ftjob-\S+ \((validating_files|queued)\)", quickstart.stdout), (
            quickstart.stdout
        )
        assert ": succeeded; model ft:" in quickstart.stdout, quickstart.stdout + quickstart.stderr
        assert list(tmp_path.glob("ftjob-*-adapter.tar.gz"))  # downloaded, as the example does
    finally:
        server.terminate()
        server.wait(timeout=60)
