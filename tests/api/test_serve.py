"""`vaccine serve` on an empty VACCINE_HOME answers in seconds: nothing trains before the API is up."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

FIRST_ANSWER_SECONDS = 10


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
