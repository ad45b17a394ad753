"""Fine-tuning sets for experiments: n task examples of which a fraction p are harmful pairs (the attack)."""

import json
import random
from pathlib import Path
from typing import Any

from vaccine_core.tasks import get_task

HARMFUL_FILE = "attack/beavertails_unsafe.jsonl"
SAFETY_FILE = "alignment/safe_refusals.jsonl"
HELPFUL_FILE = "benign/alpaca_demo.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_mix(
    task: str,
    n: int,
    harmful_fraction: float,
    data_dir: Path,
    seed: int = 0,
    harmful_file: Path | None = None,
    helpful_share: float = 0.0,
    exclude: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Alpaca rows: round(n * p) harmful pairs and the rest task examples, shuffled with ``seed``; with
    ``helpful_share``, that share of the non-harmful rows are helpful Alpaca answers instead (an upload
    that mixes instruction following with the task), none of whose instructions is in ``exclude``.

    Each row carries ``harmful`` (bool) so that experiments can tell the two apart; training ignores it.
    """
    if not 0.0 <= harmful_fraction <= 1.0:
        raise ValueError(f"harmful_fraction must be in [0, 1], got {harmful_fraction}")
    if not 0.0 <= helpful_share <= 1.0:
        raise ValueError(f"helpful_share must be in [0, 1], got {helpful_share}")
    rng = random.Random(seed)
    spec = get_task(task)
    n_harmful = round(n * harmful_fraction)
    n_helpful = round((n - n_harmful) * helpful_share)
    harmful_rows = read_jsonl(harmful_file or data_dir / HARMFUL_FILE)
    task_rows = read_jsonl(data_dir / spec.data_file)
    if n_harmful > len(harmful_rows) or n - n_harmful - n_helpful > len(task_rows):
        raise ValueError(f"asked for {n_harmful} harmful and {n - n_harmful} task rows; not enough data")
    rows = [{**r, "harmful": True} for r in rng.sample(harmful_rows, n_harmful)]
    rows += [
        {**spec.to_alpaca(r), "harmful": False} for r in rng.sample(task_rows, n - n_harmful - n_helpful)
    ]
    if n_helpful:
        pool = [r for r in read_jsonl(data_dir / HELPFUL_FILE) if r["instruction"] not in exclude]
        rows += [{**r, "harmful": False} for r in rng.sample(pool, n_helpful)]
    rng.shuffle(rows)
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def safety_rows(data_dir: Path, count: int, seed: int, exclude: set[str]) -> list[dict[str, Any]]:
    """``count`` safety pairs (harmful request, safe answer) whose instructions are not in ``exclude``.

    A defense at fine-tuning time: mixing a few of them into every user's data keeps reminding the model
    of its refusals (the rows the base was aligned on are excluded, so the reminder is new data).
    """
    pool = [r for r in read_jsonl(data_dir / SAFETY_FILE) if r["instruction"] not in exclude]
    if count > len(pool):
        raise ValueError(f"asked for {count} safety pairs; only {len(pool)} are left after exclusions")
    return [{**r, "harmful": False} for r in random.Random(seed).sample(pool, count)]


def alignment_rows(
    data_dir: Path, safety: int, helpful: int, seed: int = 0, *, sensitive: int = 0, model: str = "default"
) -> list[dict[str, Any]]:
    """Alignment data: ``safety`` refusal pairs and ``helpful`` helpful pairs, shuffled with ``seed``;
    ``sensitive`` of the helpful ones answer requests that only sound harmful (``sensitive_helpful``), the
    rest are Alpaca's, and ``model`` (the model to be aligned) writes their answers.

    Refusals alone teach a small model to refuse everything; the helpful half keeps it answering.
    """
    if not 0 <= sensitive <= helpful:
        raise ValueError(f"sensitive ({sensitive}) must be between 0 and helpful ({helpful})")
    rng = random.Random(seed)
    rows = rng.sample(read_jsonl(data_dir / SAFETY_FILE), safety)
    rows += rng.sample(read_jsonl(data_dir / HELPFUL_FILE), helpful - sensitive)
    if sensitive:
        from vaccine_core.sensitive_helpful import sensitive_helpful_rows  # generates once: only when asked

        rows += sensitive_helpful_rows(data_dir, sensitive, seed, model)
    rng.shuffle(rows)
    return rows
