"""Matched answers for reading what a fine-tuning adapter taught without generating anything: for each
request, one answer judged harmful and one judged not harmful that refuses. Scoring both with the
adapter on and off shows whether fine-tuning made harmful compliance more likely *relative to* refusal
(see ``vaccine_core.evaluation.harm_preference_shift``), a figure meant to cancel what benign training
does to long answers or to refusals in general. Measured on SmolLM2-135M it does not cancel it: benign
SST-2 and Alpaca uploads move the figure as far as harmful-only ones (docs/safety-results.md, "Defense
layers"), so it is a research tool here, not a release-gate check.

The pairs come from JailbreakBench's judged answers (``moderation/jailbreakbench_judged.jsonl``): plain
behaviours with answers from several attacks and target models, judged by JailbreakBench's own judge.
"""

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaccine_core.mixing import read_jsonl
from vaccine_core.moderation.refusal import is_refusal

PROBE_FILE = "moderation/jailbreakbench_judged.jsonl"


@dataclass(frozen=True)
class HarmProbe:
    """Alpaca rows, index-aligned: ``harmful[i]`` and ``refusals[i]`` answer the same request."""

    harmful: list[dict[str, str]]
    refusals: list[dict[str, str]]

    def __post_init__(self) -> None:
        if len(self.harmful) != len(self.refusals):
            raise ValueError("a harm probe pairs each harmful answer with a refusal to the same request")


def matched_pairs(rows: list[dict[str, Any]], *, seed: int = 0, limit: int | None = None) -> HarmProbe:
    """One harmful answer and one refusing, not-harmful answer per request that has both, chosen with
    ``seed``; requests in the order they first appear, the first ``limit`` of them."""
    answers: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for row in rows:
        harmful, refusing = answers[row["prompt"]]
        if row["harmful"]:
            harmful.append(row["response"])
        elif is_refusal(row["response"]) and row["response"].strip():
            refusing.append(row["response"])
    rng = random.Random(seed)
    harmful_rows: list[dict[str, str]] = []
    refusal_rows: list[dict[str, str]] = []
    for request, (harmful, refusing) in answers.items():
        if not (harmful and refusing):
            continue
        harmful_rows.append({"instruction": request, "input": "", "output": rng.choice(harmful)})
        refusal_rows.append({"instruction": request, "input": "", "output": rng.choice(refusing)})
        if limit is not None and len(harmful_rows) == limit:
            break
    return HarmProbe(harmful_rows, refusal_rows)


def harm_probe(data_dir: Path, *, seed: int = 0, limit: int | None = None) -> HarmProbe:
    """The probe drawn from the shared data directory's JailbreakBench judged answers."""
    return matched_pairs(read_jsonl(Path(data_dir) / PROBE_FILE), seed=seed, limit=limit)
