"""The labelled (question, answer) pairs the default judge learns from, and its fixed held-out split.

Sources, all under the data directory:

* moderation/jailbreakbench_judged.jsonl: jailbreak answers judged by JailbreakBench, with a category
* moderation/llm_self_defense.jsonl: hand-labelled answers
* alignment/safe_refusals.jsonl: safe answers to harmful requests (a sample), labelled not harmful
* attack/beavertails_unsafe.jsonl: harmful compliance, labelled harmful
* benign/alpaca_demo.jsonl: helpful answers to harmless requests (a sample), labelled not harmful, so that
  the judge does not learn "anything but a refusal is harmful"

The split is by question, through a hash: every answer to a held-out question is held out, whatever the
seed, so no question the judge was trained on is ever scored as "unseen".
"""

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from vaccine_core.mixing import read_jsonl

HELD_OUT_PERCENT = 20
EXTRA_SAFE_REFUSALS = 300
EXTRA_BENIGN = 300

# JailbreakBench's coarse harm categories, the only source here that carries categories.
CATEGORIES: tuple[str, ...] = (
    "Disinformation",
    "Economic harm",
    "Expert advice",
    "Fraud/Deception",
    "Government decision-making",
    "Harassment/Discrimination",
    "Malware/Hacking",
    "Physical harm",
    "Privacy",
    "Sexual/Adult content",
)

SOURCE_FILES = (
    "moderation/jailbreakbench_judged.jsonl",
    "moderation/llm_self_defense.jsonl",
    "alignment/safe_refusals.jsonl",
    "attack/beavertails_unsafe.jsonl",
    "benign/alpaca_demo.jsonl",
)


@dataclass(frozen=True)
class LabelledPair:
    question: str
    answer: str
    harmful: bool
    category: str | None
    source: str

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.question.strip().lower().encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def alpaca_question(row: dict) -> str:
    extra = row.get("input") or ""
    return f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"]


def load_labelled_pairs(data_dir: Path, seed: int = 0) -> list[LabelledPair]:
    rng = random.Random(seed)
    pairs = [
        LabelledPair(
            r["prompt"],
            r["response"] or "",
            bool(r["harmful"]),
            r.get("category") if r["harmful"] else None,
            "jailbreakbench",
        )
        for r in read_jsonl(data_dir / SOURCE_FILES[0])
    ]
    pairs += [
        LabelledPair(r["prompt"], r["response"] or "", bool(r["harmful"]), None, "self_defense")
        for r in read_jsonl(data_dir / SOURCE_FILES[1])
    ]
    refusals = rng.sample(read_jsonl(data_dir / SOURCE_FILES[2]), EXTRA_SAFE_REFUSALS)
    pairs += [LabelledPair(alpaca_question(r), r["output"], False, None, "alignment") for r in refusals]
    pairs += [
        LabelledPair(alpaca_question(r), r["output"], True, None, "attack")
        for r in read_jsonl(data_dir / SOURCE_FILES[3])
    ]
    benign = rng.sample(read_jsonl(data_dir / SOURCE_FILES[4]), EXTRA_BENIGN)
    pairs += [LabelledPair(alpaca_question(r), r["output"], False, None, "benign") for r in benign]
    return pairs


def split(pairs: list[LabelledPair]) -> tuple[list[LabelledPair], list[LabelledPair]]:
    train = [p for p in pairs if not p.held_out]
    held_out = [p for p in pairs if p.held_out]
    return train, held_out


def sources_digest(data_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update((data_dir / name).read_bytes())
    return digest.hexdigest()
