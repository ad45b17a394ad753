"""Load on loopback: real concurrent HTTP clients against the API under uvicorn, on one backend a run.

* ``polling``: N clients each ask for one job's status once a second (as the official client's
  ``wait``-style loops and dashboards do), for ``--seconds``; latency p50/p99 and answered requests/s, at
  50 and 200 clients. Each client is an aiohttp session with one keep-alive connection (asyncio, one
  process; aiohttp rather than httpx because the clients share the API's 2 cores, and httpx spent 4.3 ms
  of CPU a request, more than the API's 2-3 ms).
* ``upload``: one ``--upload-mb`` MB JSONL file streamed from memory to ``POST /v1/files`` (validation
  included, as a user waits for it): MB/s, and the API process's peak resident memory before and after.
* ``dispatch``: ``--jobs`` jobs created one after another on a tiny ready base: seconds from the create
  call's answer until the job is ``running`` (the worker claimed it), polled every 20 ms.

Backends: ``embedded`` (SQLite and the broker in files: what `vaccine serve` runs) and ``postgres+redis``
(PostgreSQL on 127.0.0.1 and a Redis of the benchmark's own). The stack (API, one `celery worker`) is
fault_drills.py's, with its tiny model and shortened settings.

    .venv/bin/python benchmarks/api_load.py --backend postgres+redis
    .venv/bin/python benchmarks/api_load.py --backend embedded

Each run replaces its backend's rows in benchmarks/results/api_load-cpu-2cores.json.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from fault_drills import Redis, Stack, create_job, upload, wait_until_ended

from tests.service_helpers import fresh_postgres_database, proc_stat

TARGETS = {
    "polling_p99_ms_at_200": 50,
    "upload_mb_per_s": 50,
    "upload_rss_growth_mb": 100,
    "dispatch_p50_s": 1,
}


async def poll_load(base_url: str, key: str, job_id: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: float) -> None:
        nonlocal failures
        headers = {"Authorization": f"Bearer {key}"}
        timeout = aiohttp.ClientTimeout(total=30)
        # one keep-alive connection per client, as a user's SDK holds one
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
            await asyncio.sleep(offset)  # spread the clients over the first second
            while (started := time.perf_counter()) < deadline:
                try:
                    async with http.get(f"{base_url}/fine_tuning/jobs/{job_id}") as answer:
                        await answer.read()
                        if answer.status == 200:
                            latencies.append(time.perf_counter() - started)
                        else:
                            failures += 1
                except (aiohttp.ClientError, TimeoutError):
                    failures += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))

    began = time.perf_counter()
    await asyncio.gather(*(client(i / clients) for i in range(clients)))
    elapsed = time.perf_counter() - began
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "failures": failures,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "max_ms": round(1000 * max(latencies), 2),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def polled(stack: Stack, url: str, key: str, job_id: str, clients: int, seconds: float) -> dict[str, Any]:
    """One polling run, with the API process's CPU time a request (what the clients cost is not in it)."""
    before = cpu_seconds(stack.api.pid)
    result = asyncio.run(poll_load(url, key, job_id, clients, seconds))
    used = cpu_seconds(stack.api.pid) - before
    return {**result, "api_cpu_ms_per_request": round(1000 * used / max(1, result["requests"]), 2)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def upload_load(stack: Stack, key: str, megabytes: int) -> dict[str, Any]:
    row = json.dumps(
        {"instruction": "Classify the sentiment of this review: " + "fine " * 40, "output": "positive"}
    )
    line = (row + "\n").encode()
    content = line * (megabytes * 1024 * 1024 // len(line))
    before = peak_rss_mb(stack.api.pid)
    started = time.perf_counter()
    answer = httpx.post(
        f"http://127.0.0.1:{stack.api_port}/v1/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("big.jsonl", content)},
        data={"purpose": "fine-tune"},
        timeout=600,
    )
    seconds = time.perf_counter() - started
    after = peak_rss_mb(stack.api.pid)
    return {
        "megabytes": round(len(content) / 1024**2, 1),
        "status": answer.status_code,
        "seconds": round(seconds, 2),
        "mb_per_s": round(len(content) / 1024**2 / seconds, 1),
        "api_peak_rss_mb_before": round(before, 1),
        "api_peak_rss_mb_after": round(after, 1),
        "rss_growth_mb": round(after - before, 1),
    }


def dispatch_load(stack: Stack, key: str, jobs: int) -> dict[str, Any]:
    client = stack.client(key)
    file_id = upload(client, seed=0)
    delays = []
    for _ in range(jobs):
        job_id = create_job(client, file_id)
        created = time.perf_counter()
        while client.fine_tuning.jobs.retrieve(job_id).status in ("queued", "validating_files"):
            time.sleep(0.02)
        delays.append(time.perf_counter() - created)
        client.fine_tuning.jobs.cancel(job_id)  # the worker is free for the next one sooner
        wait_until_ended(client, job_id, timeout=300)
    return {
        "jobs": jobs,
        "p50_s": round(statistics.median(delays), 3),
        "max_s": round(max(delays), 3),
        "seconds": [round(d, 3) for d in delays],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["embedded", "postgres+redis"], default="postgres+redis")
    parser.add_argument("--clients", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--upload-mb", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "api_load-cpu-2cores.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="load-")))
        redis = None
        if args.backend == "postgres+redis":
            database_url = cleanup.enter_context(fresh_postgres_database())
            redis = Redis(workdir)
            redis.start()
            cleanup.callback(redis.stop)
        else:
            database_url = f"sqlite:///{workdir / 'home' / 'vaccine.db'}"
        stack = Stack(workdir / "home", database_url, redis)
        cleanup.callback(stack.stop)
        key = stack.migrate_and_seed()
        stack.start_api()
        stack.start_worker()
        client = stack.client(key)
        job_id = create_job(client, upload(client, seed=1))
        wait_until_ended(client, job_id, timeout=300)  # a finished job: its status is what pollers read
        base_url = f"http://127.0.0.1:{stack.api_port}/v1"
        polling = [
            {"backend": args.backend, **polled(stack, base_url, key, job_id, n, args.seconds)}
            for n in args.clients
        ]
        uploaded = {"backend": args.backend, **upload_load(stack, key, args.upload_mb)}
        dispatch = {"backend": args.backend, **dispatch_load(stack, key, args.jobs)}
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    mine = {"backend": args.backend, **provenance(__file__)}
    results["runs"] = [r for r in results.get("runs", []) if r["backend"] != args.backend] + [mine]
    results["polling"] = [r for r in results.get("polling", []) if r["backend"] != args.backend] + polling
    results["upload"] = [r for r in results.get("upload", []) if r["backend"] != args.backend] + [uploaded]
    results["dispatch"] = [r for r in results.get("dispatch", []) if r["backend"] != args.backend] + [
        dispatch
    ]
    results.update(benchmark="api_load", targets=TARGETS, machine=machine_info())
    write_result(args.out, results)
    print(json.dumps({"polling": polling, "upload": uploaded, "dispatch": dispatch}, indent=2))


if __name__ == "__main__":
    main()
