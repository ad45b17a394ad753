"""First start, timed: `vaccine serve` on a VACCINE_HOME with no database, until its default base is ready.

    .venv/bin/python benchmarks/first_start.py [--also vaccine] [--name NAME]

Starts the embedded default (API and one worker) with an operator key, waits for the API, then polls
`/admin/models` until every base is ready or failed, and reports per base the seconds from start to
ready, the alignment's own training seconds (its manifest) and the safety report the worker measured on
it. `--also vaccine` registers a second base, aligned with Vaccine on the same mix and steps, once the
first is ready, so the two methods' costs compare on one machine in one run. The judge and the converted
model are reused from the home's cache when there (their first training is timed by `vaccine moderation
train` instead). Results: benchmarks/results/first_start-<name>.json.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from service.bases import base_dir
from service.settings import ServiceSettings
from vaccine_core.artifacts import read_manifest

CACHES = ("judges", "models")  # reused from the real home: their first build is timed elsewhere
POLL_SECONDS = 5.0


def wait_until_ready(
    client: httpx.Client, started: float, deadline: float, done: Collection[str] = ()
) -> dict[str, float]:
    """Seconds from ``started`` at which each base not ``done`` already became ready (or failed), polling
    until all have."""
    ended: dict[str, float] = {}
    while time.monotonic() < deadline:
        waiting = [b for b in client.get("/admin/models").json()["data"] if b["id"] not in done]
        for base in waiting:
            if base["status"] in ("ready", "failed") and base["id"] not in ended:
                ended[base["id"]] = round(time.monotonic() - started, 1)
                print(f"{base['id']}: {base['status']} after {ended[base['id']]} s", flush=True)
        if waiting and len(ended) == len(waiting):
            return ended
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"bases not ready within the deadline: {ended}")


def base_figures(base: dict[str, Any], home: Path) -> dict[str, Any]:
    path = base_dir(home, base["id"])
    manifest = read_manifest(path) if (path / "manifest.json").exists() else {}
    train = manifest.get("metrics", {}).get("train") or {}
    return {
        "status": base["status"],
        "alignment": base.get("alignment"),
        "steps": train.get("steps"),
        "train_seconds": train.get("seconds"),
        "report": base.get("report"),
        "error": base.get("error"),
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--also", choices=["vaccine"], help="a second base aligned with Vaccine, timed too")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--deadline-minutes", type=float, default=60)
    parser.add_argument("--name", default="cpu")
    parser.add_argument(
        "--keep-home", action="store_true", help="keep the VACCINE_HOME it made (its aligned bases)"
    )
    args = parser.parse_args(argv)

    default = ServiceSettings()  # as the environment says, before this run points VACCINE_HOME elsewhere
    real_home = default.home
    home = Path(tempfile.mkdtemp(prefix="vaccine-first-start-"))
    for cache in CACHES:
        if (real_home / cache).exists():
            (home / cache).symlink_to(real_home / cache)
    key = "first-start-operator"
    env = {**os.environ, "VACCINE_HOME": str(home), "VACCINE_ADMIN_KEY": key}
    # the CLI through Python itself: a GPU machine may hold the project without its console scripts
    command = [sys.executable, "-c", "from api.cli import app; app()", "serve", "--port", str(args.port)]
    started = time.monotonic()
    log = (home / "serve.log").open("w")  # a file, not a pipe: progress bars would fill a pipe and stall it
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        deadline = started + args.deadline_minutes * 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not answer; its log: {home / 'serve.log'}")
        answered = round(time.monotonic() - started, 1)
        ready = wait_until_ready(client, started, deadline)
        if args.also:
            name = f"smollm2-135m-{args.also}"
            registered = time.monotonic()
            reply = client.post(
                "/admin/models",
                json={
                    "name": name,
                    "source": default.default_base_source,
                    "method": args.also,
                    "pairs": default.default_alignment_pairs,
                    "epochs": default.default_alignment_epochs,
                },
            )
            reply.raise_for_status()
            more = wait_until_ready(client, registered, deadline, done=ready)
            ready[name] = more[name]
        bases = {b["id"]: base_figures(b, home) for b in client.get("/admin/models").json()["data"]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    for base_id, figures in bases.items():
        figures["seconds_to_ready"] = ready.get(base_id)
    result = {
        **provenance(__file__),
        "machine": machine_info(),
        "api_answered_seconds": answered,
        "bases": bases,
    }
    out = RESULTS / f"first_start-{args.name}.json"
    write_result(out, result)
    print(out)
    if args.keep_home:
        print(f"kept {home}: the bases under {base_dir(home, '<id>')}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
