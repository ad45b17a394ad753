"""Chat inference through the API on loopback: time to first token and tokens/s at 1 and 8 concurrent
clients, streaming through the official openai client.

The API (uvicorn, the embedded default's SQLite and file broker) serves a base registered from an alignment
run directory (``--base``, default: the safety grid's SFT base of the default model); every client asks
``--requests`` questions from protocol v2's harmless prompts one after another, greedy, ``--max-tokens``
new tokens. A request joins the model's running batch at its next decoding step (service/inference.py),
so 8 clients share decoding steps rather than queue for them: the figures say what a user waits for.

    .venv/bin/python benchmarks/inference_speed.py [--base PATH] [--clients 1 8] [--repeats 3]

Writes benchmarks/results/inference-cpu-2cores.json.
"""

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from fault_drills import Stack

from vaccine_core.mixing import read_jsonl
from vaccine_core.settings import get_settings

BASE_NAME = "bench-base"


def default_base() -> Path:
    bases = sorted((get_settings().home / "benchmarks" / "harmful_finetune" / "bases").glob("sft-rho0-*/"))
    if not bases:
        sys.exit("no SFT base cached: run benchmarks/safety_grid.py first, or pass --base")
    return bases[0]


def register(base: Path) -> None:
    from sqlalchemy.orm import Session

    from service.db import get_engine
    from service.models import BaseModelRecord, BaseStatus

    with Session(get_engine()) as session:
        session.add(BaseModelRecord(id=BASE_NAME, source="default", status=BaseStatus.READY, path=str(base)))
        session.commit()


def one_client(client: Any, prompts: list[str], max_tokens: int, records: list[dict[str, float]]) -> None:
    for prompt in prompts:
        started = time.perf_counter()
        first, pieces = None, 0
        stream = client.chat.completions.create(
            model=BASE_NAME,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                first = first or time.perf_counter()
        ended = time.perf_counter()
        records.append(
            {"ttft": (first or ended) - started, "seconds": ended - started, "pieces": pieces, "ended": ended}
        )


def run(stack: Stack, key: str, prompts: list[str], clients: int, max_tokens: int) -> dict[str, Any]:
    records: list[dict[str, float]] = []
    share = len(prompts) // clients
    threads = [
        threading.Thread(
            target=one_client,
            args=(stack.client(key), prompts[i * share : (i + 1) * share], max_tokens, records),
        )
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ttft = [r["ttft"] for r in records]
    pieces = sum(r["pieces"] for r in records)
    return {
        "clients": clients,
        "requests": len(records),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_max_s": round(max(ttft), 3),
        "request_p50_s": round(statistics.median(r["seconds"] for r in records), 3),
        "streamed_pieces": pieces,
        "pieces_per_s": round(pieces / elapsed, 1),
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, help="an alignment run directory (default: the grid's SFT base)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--requests", type=int, default=16, help="questions in all, shared by the clients")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each client count (arrival order varies between runs)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    base = args.base or default_base()
    harmless = read_jsonl(get_settings().data_dir / "eval/harmless_val.jsonl")
    prompts = [row.get("prompt") or row.get("instruction") for row in harmless][: args.requests]
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="inference-")))
        stack = Stack(workdir / "home", f"sqlite:///{workdir / 'home' / 'vaccine.db'}", None)
        cleanup.callback(stack.stop)
        key = stack.migrate_and_seed()
        register(base)
        stack.start_api()
        warm = stack.client(key).chat.completions.create(  # the first request loads the model
            model=BASE_NAME, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
        assert warm.choices[0].message.content is not None
        runs = [
            {"repeat": repeat, **run(stack, key, prompts, clients, args.max_tokens)}
            for repeat in range(args.repeats)
            for clients in args.clients
        ]
    result = {
        "benchmark": "inference_speed",
        "base": str(base),
        "max_tokens": args.max_tokens,
        "runs": runs,
        "note": "a streamed piece is about a token (pieces inside a multi-byte character are joined)",
        "machine": machine_info(),
        **provenance(__file__),
    }
    out = RESULTS / "inference-cpu-2cores.json"
    write_result(out, result)
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
