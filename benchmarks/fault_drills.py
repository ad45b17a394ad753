"""Fault drills against the production shape on loopback: PostgreSQL, a Redis of the drill's own, the
API under uvicorn and `celery worker` processes, all started (and stopped) by the drill.

* ``kill``: SIGKILL the worker in the middle of a job, ``--kills`` times across jobs (at different steps,
  one right after a checkpoint step, one during the safety evaluation), a fresh worker started after each
  kill; every job must end ``succeeded`` having resumed from its newest checkpoint, or ``failed`` with a
  clear code after ``max_attempts`` starts, never stuck. One job also runs uninterrupted with the same file
  and seed: its adapter is compared with the killed one's.
* ``postgres``: restart PostgreSQL while four clients poll the API: 200s and 503s in the error envelope
  only, the API and worker recover without a restart, and a job created afterwards succeeds.
* ``redis``: restart Redis (no persistence, so its queued messages are gone) while one job runs and others
  wait in the queue, and create one job while Redis is down: no job may be lost.

Settings are shortened so a drill takes minutes: a heartbeat is stale after 6 s, the reaper looks every
2 s, a queued job unsent for 10 s is sent again. Models are tiny (built in memory, as in the tests) and
the safety report asks 3 x 24 prompts of 128 tokens (seconds, a window to kill in), so the drill measures the
service's machinery, not the model.

    .venv/bin/python benchmarks/fault_drills.py [--drills kill redis] [--kills 10]

Writes benchmarks/results/fault_drills.json with every job's path through its states.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tiny model builder
from common import REPO as ROOT
from common import RESULTS, machine_info, provenance, write_result

from tests.service_helpers import fresh_postgres_database

ENDED = {"succeeded", "failed", "cancelled"}
ROWS = 240  # x 2 epochs / batch 4 = 120 steps: long enough to kill a worker mid-training
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


class Redis:
    """A redis-server of the drill's own, without persistence: a restart loses every message."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.process = free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.ping, 10, "redis start")

    def ping(self) -> bool:
        return (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            == "PONG"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Stack:
    """PostgreSQL + Redis + API + workers, sharing one VACCINE_HOME and environment; without ``redis``,
    the embedded default's broker in files."""

    def __init__(self, home: Path, database_url: str, redis: Redis | None):
        self.home, self.redis, self.workers = home, redis, []
        prompts = home / "eval_prompts.jsonl"
        home.mkdir(parents=True, exist_ok=True)
        # enough prompts and tokens that the safety report lasts seconds: a window to kill a worker in
        prompts.write_text("".join(f'{{"prompt": "harmful request {i}"}}\n' for i in range(24)))
        self.env = {
            **os.environ,
            "VACCINE_HOME": str(home),
            "VACCINE_DATABASE_URL": database_url,
            **({"VACCINE_BROKER_URL": redis.url} if redis is not None else {}),
            "VACCINE_ADMIN_KEY": "drill-operator",
            "VACCINE_PRESCREEN_JUDGE": "refusal",
            "VACCINE_SAFETY_JUDGE": "refusal",
            # the drills and the load benchmark poll with one key, many times a second: what they measure
            # is the service under faults and load, not the per-key limit (tests/api/test_rate_limit.py)
            "VACCINE_RATE_LIMIT": "",
            "VACCINE_EVAL_PROMPTS_FILE": str(prompts),
            "VACCINE_EVAL_PROMPTS": "24",
            "VACCINE_HARMLESS_PROMPTS_FILE": str(prompts),
            "VACCINE_HARMLESS_PROMPTS": "24",
            "VACCINE_BORDERLINE_PROMPTS_FILE": str(prompts),
            "VACCINE_BORDERLINE_PROMPTS": "24",
            "VACCINE_EVAL_SAMPLES": "1",
            "VACCINE_EVAL_MAX_NEW_TOKENS": "128",
            "VACCINE_HARMFUL_SCORE_THRESHOLD": "100",
            "VACCINE_DEGENERATE_THRESHOLD": "100",
            "VACCINE_STALE_HEARTBEAT_SECONDS": "6",
            "VACCINE_REAPER_INTERVAL_SECONDS": "2",
            "VACCINE_REDISPATCH_AFTER_SECONDS": "10",
            "VACCINE_MAX_ATTEMPTS": "3",
            "TOKENIZERS_PARALLELISM": "false",
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("VACCINE_")})
        self.api_port = free_port()
        self.api = None
        self.logs: list[Any] = []

    def log(self, name: str) -> Any:
        """A log file under VACCINE_HOME for a process's stderr, closed when the stack stops."""
        handle = (self.home / f"{name}.log").open("ab")
        self.logs.append(handle)
        return handle

    def migrate_and_seed(self) -> str:
        """The schema, a ready tiny base and a tenant; the tenant's key."""
        from sqlalchemy.orm import Session

        from service.db import get_engine
        from service.models import BaseModelRecord, BaseStatus
        from service.tenants import create_tenant
        from tests.conftest import SAFETY_ROWS, make_tokenizer, save_tiny_llama
        from tests.service_helpers import FAST
        from vaccine_core.align import align
        from vaccine_core.config import PerturbationConfig
        from vaccine_core.mixing import write_rows

        subprocess.run([str(BIN / "vaccine"), "db", "upgrade"], env=self.env, check=True, capture_output=True)
        model_dir = save_tiny_llama(self.home / "tiny-llama", make_tokenizer())
        safety = self.home / "safety.jsonl"
        write_rows(safety, SAFETY_ROWS)
        aligned = align(str(model_dir), safety, self.home / "aligned", PerturbationConfig("vaccine"), FAST)
        with Session(get_engine()) as session:
            session.add(
                BaseModelRecord(
                    id="tiny", source=str(model_dir), status=BaseStatus.READY, path=str(aligned.output_dir)
                )
            )
            session.commit()
            tenant, key = create_tenant(session, "drill")
            tenant.max_concurrent_jobs = 20  # every drill job may wait in the queue at once
            session.commit()
        return key

    def start_api(self) -> None:
        self.api = subprocess.Popen(
            [str(BIN / "uvicorn"), "api.asgi:app", "--port", str(self.api_port), "--log-level", "warning"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log("api"),
        )

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the API")

    def start_worker(self) -> subprocess.Popen:
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:4]}@drill"
        worker = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "worker.celery_app:celery_app",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "-n",
                name,
                "--loglevel",
                "WARNING",
            ],
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=self.log(name.split("@")[0]),
        )
        self.workers.append(worker)
        return worker

    @staticmethod
    def kill(worker: subprocess.Popen) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                self.kill(worker)
        if self.api is not None and self.api.poll() is None:
            self.api.kill()
            self.api.wait()
        for handle in self.logs:
            handle.close()

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.api_port}/v1", api_key=key, max_retries=2)


def upload(client: openai.OpenAI, seed: int) -> str:
    rows = [{"instruction": f"Say hello number {i}", "output": f"Hello {i}!"} for i in range(ROWS)]
    random.Random(seed).shuffle(rows)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = client.files.create(file=("drill.jsonl", data), purpose="fine-tune")
    return client.files.wait_for_processing(uploaded.id, poll_interval=0.2, max_wait_seconds=120).id


def create_job(client: openai.OpenAI, file_id: str) -> str:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-2}
    return client.fine_tuning.jobs.create(
        model="tiny", training_file=file_id, hyperparameters=hyperparameters, seed=7
    ).id


def journey(client: openai.OpenAI, job_id: str) -> dict[str, Any]:
    """Where the job ended, how many times it started, and its events' messages (oldest first)."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)][::-1]
    return {
        "job": job_id,
        "status": job.status,
        "error": job.error.code if job.error else None,
        "starts": sum(m in ("Fine-tuning job started", "Resumed after an interruption") for m in events),
        "requeued": sum("queued again" in m for m in events),
        "events": [m for m in events if not m.startswith("Step ")],
    }


def wait_until_ended(client: openai.OpenAI, job_id: str, timeout: float) -> str:
    def ended() -> str | None:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        return status if status in ENDED else None

    return wait_for(ended, timeout, f"{job_id} ends")


def reached(client: openai.OpenAI, job_id: str, step: int) -> bool:
    return (client.fine_tuning.jobs.retrieve(job_id).progress or {}).get("step", 0) >= step


def evaluating(client: openai.OpenAI, job_id: str) -> bool:
    return any("Evaluating" in e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=5))


def adapter_difference(home: Path, first: str, second: str) -> float:
    from safetensors.torch import load_file

    a = load_file(home / "jobs" / first / "adapter_model.safetensors")
    b = load_file(home / "jobs" / second / "adapter_model.safetensors")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def kill_drill(stack: Stack, key: str, kills: int) -> dict[str, Any]:
    """Kill points: steps spread over the run, one right after a checkpoint step (the checkpoint is being
    written), one while the safety report runs."""
    client = stack.client(key)
    worker = stack.start_worker()  # it pre-screens the upload too
    file_id = upload(client, seed=0)
    total_steps = ROWS * 2 // 4
    points: list[Any] = [("step", s) for s in (5, 10, 17, 33, 50, 64, 80, 95, 110)][: max(kills - 1, 0)]
    points.insert(min(len(points), 1), ("evaluation", None))
    points = points[:kills]
    records = []
    for kind, step in points:
        job_id = create_job(client, file_id)
        started = time.monotonic()
        if kind == "step":
            wait_for(partial(reached, client, job_id, step), 300, f"{job_id} reaches step {step}", every=0.05)
        else:
            wait_for(partial(evaluating, client, job_id), 300, f"{job_id} evaluates", every=0.05)
        killed_at = (client.fine_tuning.jobs.retrieve(job_id).progress or {}).get("step")
        stack.kill(worker)
        after_kill = client.fine_tuning.jobs.retrieve(job_id).status  # an ended job: the kill came too late
        worker = stack.start_worker()
        status = wait_until_ended(client, job_id, 600)
        record = journey(client, job_id)
        record.update(
            status_at_kill=after_kill,
            kill=kind,
            target_step=step,
            killed_at_step=killed_at,
            total_steps=total_steps,
            seconds=round(time.monotonic() - started, 1),
        )
        records.append(record)
        print(
            f"kill at {kind} {step}: killed at step {killed_at}, {status} after {record['starts']} starts "
            f"({record['seconds']} s)",
            flush=True,
        )
    reference = create_job(client, file_id)  # the same file and seed, uninterrupted
    wait_until_ended(client, reference, 600)
    # the job killed latest in training: it resumed from a checkpoint (written every 10 steps), not from 0
    resumable = [r for r in records if r["status"] == "succeeded" and r["kill"] == "step"]
    resumed = max(resumable, key=lambda r: r["killed_at_step"] or 0)["job"] if resumable else None
    difference = adapter_difference(stack.home, reference, resumed) if resumed else None
    stack.kill(worker)
    return {
        "kills": len(records),
        "succeeded": sum(r["status"] == "succeeded" for r in records),
        "failed_with_code": sum(r["status"] == "failed" and r["error"] is not None for r in records),
        "stuck": sum(r["status"] not in ENDED for r in records),
        "uninterrupted_reference": reference,
        "compared_job": resumed,
        "max_abs_adapter_difference": difference,
        "jobs": records,
    }


def redis_drill(stack: Stack, key: str) -> dict[str, Any]:
    """One job running and three queued when Redis restarts; one more created while it is down. The queued
    messages die with Redis: the worker's sweeper must send those jobs again."""
    client = stack.client(key)
    worker = stack.start_worker()
    file_id = upload(client, seed=1)
    jobs = [create_job(client, file_id) for _ in range(4)]
    wait_for(lambda: client.fine_tuning.jobs.retrieve(jobs[0]).status == "running", 120, "the first job runs")
    stack.redis.stop()
    down = time.monotonic()
    created_while_down = create_job(client, file_id)  # the API must answer; the sweeper sends it later
    time.sleep(2)
    stack.redis.start()
    print(f"redis was down {time.monotonic() - down:.1f} s", flush=True)
    jobs.append(created_while_down)
    ended = {job_id: wait_until_ended(client, job_id, 900) for job_id in jobs}
    stack.kill(worker)
    records = [journey(client, job_id) for job_id in jobs]
    return {
        "job_count": len(jobs),
        "succeeded": sum(s == "succeeded" for s in ended.values()),
        "lost": sum(s not in ENDED for s in ended.values()),
        # no worker died here, so a job started twice would have run twice
        "started_more_than_once": sum(r["starts"] > 1 for r in records),
        "recovery_seconds": round(time.monotonic() - down, 1),
        "records": records,
    }


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster (Debian's pg_ctlcluster, as .ci/run starts it)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "--mode", "fast"],
        check=True,
        capture_output=True,
    )


def postgres_drill(stack: Stack, key: str) -> dict[str, Any]:
    """Restart PostgreSQL while clients poll the API: every answer must be a 200 or a 503 in the error
    envelope (never a 500 or a hang), the API and the worker must recover without a restart, and a job
    created afterwards must run to the end."""
    url = f"http://127.0.0.1:{stack.api_port}/v1/fine_tuning/jobs"
    headers = {"Authorization": f"Bearer {key}"}
    answers: list[tuple[float, int | str, float]] = []  # (seconds since the restart, status, latency)
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status: int | str = http.get(url, headers=headers).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                answers.append((sent - restarted, status, time.monotonic() - sent))
                time.sleep(0.05)

    worker = stack.start_worker()
    restarted = time.monotonic() + 1.0
    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for thread in pollers:
        thread.start()
    time.sleep(1.0)
    restart_postgres()
    back = time.monotonic() - restarted
    time.sleep(5)
    stop.set()
    for thread in pollers:
        thread.join()
    client = stack.client(key)
    job_id = create_job(client, upload(client, seed=2))
    status = wait_until_ended(client, job_id, 600)
    stack.kill(worker)
    during = [a for a in answers if a[0] >= 0]
    after = [a for a in during if a[0] > back]
    first_ok = next((a[0] for a in after if a[1] == 200), None)
    counts: dict[str, int] = {}
    for _, code, _ in during:
        counts[str(code)] = counts.get(str(code), 0) + 1
    return {
        "requests_from_the_restart_on": len(during),
        "answers": counts,
        "server_errors_500": counts.get("500", 0),
        "restart_seconds": round(back, 2),
        "first_200_after_the_server_was_back_seconds": round(first_ok - back, 2) if first_ok else None,
        "slowest_answer_seconds": round(max(a[2] for a in during), 2) if during else None,
        "job_after_the_restart": status,
    }


def drills_summary(results: dict[str, Any]) -> dict[str, Any]:
    """One row a drill in the shape operators compare: trials and outcomes (lost, stuck, server errors)."""
    rows = []
    if "kill" in results:
        kill = results["kill"]
        rows.append(
            {
                "drill": "worker-sigkill",
                "trials": kill["kills"],
                "succeeded": kill["succeeded"],
                "failed_with_code": kill["failed_with_code"],
                "lost": kill["kills"] - kill["succeeded"] - kill["failed_with_code"] - kill["stuck"],
                "stuck": kill["stuck"],
                "same_weights_as_uninterrupted": kill["max_abs_adapter_difference"] == 0.0,
                "command": kill["command"],
                "date": kill["date"],
            }
        )
    if "redis" in results:
        redis = results["redis"]
        rows.append(
            {
                "drill": "redis-restart",
                "trials": redis["job_count"],
                "succeeded": redis["succeeded"],
                "lost": redis["lost"],
                "stuck": redis["job_count"] - redis["succeeded"] - redis["lost"],
                "run_twice_at_once": redis["started_more_than_once"],
                "recovery_seconds": redis["recovery_seconds"],
                "command": redis["command"],
                "date": redis["date"],
            }
        )
    if "postgres" in results:
        postgres = results["postgres"]
        rows.append(
            {
                "drill": "postgres-restart",
                "trials": postgres["requests_from_the_restart_on"],
                "answers": postgres["answers"],
                "server_errors_500": postgres["server_errors_500"],
                "slowest_answer_seconds": postgres["slowest_answer_seconds"],
                "job_after_the_restart": postgres["job_after_the_restart"],
                "command": postgres["command"],
                "date": postgres["date"],
            }
        )
    rows.append(
        {
            "drill": "storage-full-or-read-only",
            "trials": 4,
            "command": "pytest tests/api/test_storage.py",
            "outcome": "upload: 507 storage_full or 500 storage_unavailable, no partial file, quota "
            "unchanged; job: failed storage_full while training or writing results, no model released",
        }
    )
    return {"drills": rows, "machine": results.get("machine")}


def write_summary(results: dict[str, Any]) -> None:
    summary = drills_summary(results)
    write_result(RESULTS / "drills.json", summary)
    lines = ["# Fault drills", "", "| drill | trials | outcome | command |", "|---|---|---|---|"]
    for row in summary["drills"]:
        outcome = row.get("outcome") or ", ".join(
            f"{k} {v}" for k, v in row.items() if k not in ("drill", "trials", "command", "date")
        )
        lines.append(f"| {row['drill']} | {row['trials']} | {outcome} | `{row['command']}` |")
    (RESULTS / "drills.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--drills", nargs="+", choices=["kill", "redis", "postgres"], default=["kill", "redis", "postgres"]
    )
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "fault_drills.json")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="rewrite drills.json and drills.md from --out, run nothing",
    )
    args = parser.parse_args()
    if args.summary_only:
        write_summary(json.loads(args.out.read_text()))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # stop the stack on the way out
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    # each drill's result replaces its own entry: drills may be run one at a time
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(benchmark="fault_drills", machine=machine_info())
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="drill-")))
        database_url = cleanup.enter_context(fresh_postgres_database())
        redis = Redis(workdir)
        redis.start()
        cleanup.callback(redis.stop)
        stack = Stack(workdir / "home", database_url, redis)
        cleanup.callback(stack.stop)
        key = stack.migrate_and_seed()
        stack.start_api()
        drills = {
            "kill": lambda: kill_drill(stack, key, args.kills),
            "redis": lambda: redis_drill(stack, key),
            "postgres": lambda: postgres_drill(stack, key),
        }
        for name in args.drills:
            results[name] = {**provenance(__file__), **drills[name]()}
            write_result(args.out, results)
    write_summary(results)
    for drill in args.drills:
        if drill in results:
            summary = {k: v for k, v in results[drill].items() if k not in ("jobs", "records")}
            print(drill, json.dumps(summary))


if __name__ == "__main__":
    main()
