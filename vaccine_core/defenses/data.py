"""The side data a training-time defense draws from, and the stream it draws it through.

* Booster's harmful pairs: answers the JailbreakBench judge found harmful (``moderation/``), never the
  attack set (``attack/beavertails_unsafe``), so the defense is not fitted to the attack it is measured on.
* Lisa's safety pairs: (harmful request, safe answer) rows of ``alignment/safe_refusals.jsonl`` that the
  base was not aligned on, so the alignment state brings new data rather than replaying the base's;
  optionally mixed with helpful Alpaca pairs, as the alignment itself is.
* The preference term's pairs: Booster's harmful requests (or the model's own judged compliance,
  ``own_compliance``) with a refusal preferred over their harmful answer, and sensitive-sounding benign
  requests with the model's own helpful answer preferred over a refusal; never an evaluation prompt.
"""

import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from vaccine_core.artifacts import read_manifest
from vaccine_core.data import SupervisedDataset
from vaccine_core.formats import Conversation, load_dataset, parse_rows
from vaccine_core.mixing import HELPFUL_FILE, SAFETY_FILE, read_jsonl
from vaccine_core.text import normalised

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


# The refusals of the preference pairs: chosen under a harmful request, rejected under a benign one, so the
# same words are right or wrong by the request alone. Plain phrasings the refusal judge knows.
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with that request.",
    "I'm sorry, but I can't assist with that.",
    "I can't provide that information.",
)


def preference_pairs(
    data_dir: Path,
    count: int,
    seed: int = 0,
    exclude: Collection[str] = (),
    harmful: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """``count`` rows of (instruction, chosen, rejected), sampled with ``seed``: half harmful requests (a
    refusal chosen over the harmful answer), half sensitive-sounding benign ones (the model's own helpful
    answer chosen over a refusal). The harmful (instruction, output) rows are ``harmful`` where given
    (``own_compliance``), else Booster's judged-harmful pairs. Requests whose normalised text is in
    ``exclude`` (the evaluation's prompts, normalised) are never drawn."""
    from vaccine_core.sensitive_helpful import sensitive_helpful_rows

    rng = random.Random(seed)
    harmful_count = count // 2
    source = booster_pairs(data_dir) if harmful is None else harmful
    harmful = [row for row in source if normalised(row["instruction"]) not in exclude]
    if harmful_count > len(harmful):
        raise ValueError(f"asked for {harmful_count} harmful preference pairs; {len(harmful)} are usable")
    rows = [
        {"instruction": row["instruction"], "chosen": rng.choice(REFUSALS), "rejected": row["output"]}
        for row in rng.sample(harmful, harmful_count)
    ]
    benign = sensitive_helpful_rows(data_dir, count - harmful_count, seed)
    rows += [
        {"instruction": row["instruction"], "chosen": row["output"], "rejected": rng.choice(REFUSALS)}
        for row in benign
        if normalised(row["instruction"]) not in exclude
    ]
    if len(rows) < count:
        raise ValueError(f"{count - len(rows)} sensitive-helpful requests are evaluation prompts")
    return rows


def user_turn(conversation: Conversation) -> str:
    return next(m["content"] for m in conversation.messages if m["role"] == "user")


def aligned_requests(base: str | Path) -> set[str]:
    """The user turns an alignment run trained on (empty for a base that was never aligned here)."""
    manifest = read_manifest(Path(base)) if Path(base).is_dir() else None
    path = ((manifest or {}).get("data") or {}).get("path")
    if manifest is None or manifest.get("kind") != "alignment" or not path or not Path(path).is_file():
        return set()
    return {user_turn(c) for c in load_dataset(path).conversations}


def unaligned_rows(
    data_dir: Path, name: str, aligned: Collection[str], exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """The rows of ``name`` in ``data_dir`` whose request is none of the user turns in ``aligned`` and,
    normalised, none in ``exclude``."""
    rows = read_jsonl(Path(data_dir) / name)
    requests = parse_rows(enumerate(rows, start=1)).conversations
    return [
        row
        for row, c in zip(rows, requests, strict=True)
        if user_turn(c) not in aligned and normalised(user_turn(c)) not in exclude
    ]


def helpful_pairs(
    data_dir: Path,
    aligned: Collection[str],
    count: int,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> list[dict[str, Any]]:
    """``count`` helpful Alpaca pairs sampled with ``seed``, none on a request in ``aligned`` (the user turns
    a base was aligned on) or, normalised, in ``exclude``."""
    rows = unaligned_rows(data_dir, HELPFUL_FILE, aligned, exclude)
    if count > len(rows):
        raise ValueError(f"asked for {count} helpful pairs; {len(rows)} are left beside the base's alignment")
    return random.Random(seed).sample(rows, count)


def lisa_pairs(
    data_dir: Path,
    base: str | Path,
    count: int,
    seed: int = 0,
    *,
    helpful: int = 0,
    exclude: Collection[str] = (),
    aligned: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """``count`` pairs for Lisa's alignment state, sampled with ``seed``, none on a request the base at
    ``base`` was aligned on or (normalised) in ``exclude``: safety pairs, except ``helpful`` of them that
    are helpful Alpaca answers, as the base's alignment mixes them (refusals alone teach a small model to
    refuse everything). ``aligned``: the user turns the base was aligned on, where the caller knows them
    without the base's files (a benchmark naming a model it has not built); by default they are read from
    the base's manifest and data."""
    if not 0 <= helpful <= count:
        raise ValueError(f"helpful ({helpful}) must be between 0 and count ({count})")
    aligned = aligned_requests(base) if aligned is None else set(aligned)
    rng = random.Random(seed)
    drawn = []
    for kind, name, want in (("safety", SAFETY_FILE, count - helpful), ("helpful", HELPFUL_FILE, helpful)):
        rows = unaligned_rows(data_dir, name, aligned, exclude) if want else []
        if want > len(rows):
            left = f"{len(rows)} are left beside the base's alignment"
            raise ValueError(f"asked for {want} {kind} pairs; {left}")
        drawn += rng.sample(rows, want)
    if helpful:  # a safety-only draw keeps the order it always had, so earlier runs' data stays the same
        rng.shuffle(drawn)
    return drawn


def side_dataset(
    rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> SupervisedDataset:
    """Rows in any accepted format, validated and tokenized as a user's file would be."""
    parsed = parse_rows(enumerate(rows, start=1))
    return SupervisedDataset(parsed.conversations, tokenizer, max_length)
