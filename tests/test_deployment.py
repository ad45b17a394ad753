"""The production compose file: its shape, and that docker compose parses it where compose exists."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_has_the_production_shape():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["vaccine", "db", "upgrade"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["environment"]["VACCINE_BROKER_URL"].startswith("redis://")
        assert services[name]["environment"]["VACCINE_DATABASE_URL"].startswith("postgresql+psycopg://")
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--concurrency" in services["worker"]["command"] and "1" in services["worker"]["command"]


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(
    compose_command() is None, reason="neither 'docker compose' nor docker-compose is installed"
)
def test_docker_compose_config_parses():
    done = subprocess.run(
        [*compose_command(), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"VACCINE_ADMIN_KEY": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert done.returncode == 0, done.stderr


def test_the_production_app_hands_jobs_alignments_and_prescreens_to_celery():
    import api.asgi
    from service import queue

    state = api.asgi.app.state
    assert state.dispatch.__wrapped__ is queue.dispatch  # a broker that is down fails no request
    assert state.dispatch_alignment is queue.dispatch_alignment
    assert state.dispatch_prescreen is queue.dispatch_prescreen


@pytest.mark.parametrize("entry", ["api.asgi", "api.cli"])
def test_the_api_process_starts_without_torch(tmp_path, entry):
    """The API validates uploads, reads manifests and answers its probes without the training stack: it
    imports in about a second and holds no model library until a chat request loads one. So does the
    ``vaccine`` command (``vaccine serve``), whose library commands import what they train with when run:
    with torch, transformers and peft at import, a first start answered after 5-8 s instead of 2."""
    code = (
        f"import sys, {entry}; heavy = sorted({{'torch', 'transformers', 'worker'}} & sys.modules.keys()); "
        "sys.exit(f'the API imported {heavy}' if heavy else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "VACCINE_HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
