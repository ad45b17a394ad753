"""The side data a training-time defense draws from, and the stream it draws it through.

* Booster's harmful pairs: answers the JailbreakBench judge found harmful (``moderation/``), never the
  attack set (``attack/beavertails_unsafe``), so the defense is not fitted to the attack it is measured on.
* Lisa's safety pairs: (harmful request, safe answer) rows of ``alignment/safe_refusals.jsonl`` that the
  base was not aligned on, so the alignment state brings new data rather than replaying the base's.
"""

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from vaccine_core.artifacts import read_manifest
from vaccine_core.data import SupervisedDataset
from vaccine_core.formats import Conversation, load_dataset, parse_rows
from vaccine_core.mixing import SAFETY_FILE, read_jsonl

JUDGED_FILE = "moderation/jailbreakbench_judged.jsonl"


def booster_pairs(data_dir: Path, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Harmful (request, answer) pairs in alpaca form: the judged-harmful rows, ``count`` of them (all when
    None), sampled with ``seed``; duplicate requests keep their first answer."""
    rows, seen = [], set()
    for row in read_jsonl(Path(data_dir) / JUDGED_FILE):
        if row["harmful"] and row["prompt"] not in seen and row["response"].strip():
            seen.add(row["prompt"])
            rows.append({"instruction": row["prompt"], "input": "", "output": row["response"]})
    if count is None:
        return rows
    if count > len(rows):
        raise ValueError(f"asked for {count} harmful pairs; {JUDGED_FILE} holds {len(rows)}")
    return random.Random(seed).sample(rows, count)


def user_turn(conversation: Conversation) -> str:
    return next(m["content"] for m in conversation.messages if m["role"] == "user")


def aligned_requests(base: str | Path) -> set[str]:
    """The user turns an alignment run trained on (empty for a base that was never aligned here)."""
    manifest = read_manifest(Path(base)) if Path(base).is_dir() else None
    path = ((manifest or {}).get("data") or {}).get("path")
    if manifest is None or manifest.get("kind") != "alignment" or not path or not Path(path).is_file():
        return set()
    return {user_turn(c) for c in load_dataset(path).conversations}


def lisa_pairs(data_dir: Path, base: str | Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` safety pairs, sampled with ``seed``, whose requests the base at ``base`` was not aligned
    on."""
    rows = read_jsonl(Path(data_dir) / SAFETY_FILE)
    requests = parse_rows(enumerate(rows, start=1)).conversations
    exclude = aligned_requests(base)
    pool = [row for row, c in zip(rows, requests, strict=True) if user_turn(c) not in exclude]
    if count > len(pool):
        raise ValueError(f"asked for {count} safety pairs; {len(pool)} are left beside the base's alignment")
    return random.Random(seed).sample(pool, count)


def side_dataset(
    rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> SupervisedDataset:
    """Rows in any accepted format, validated and tokenized as a user's file would be."""
    parsed = parse_rows(enumerate(rows, start=1))
    return SupervisedDataset(parsed.conversations, tokenizer, max_length)
