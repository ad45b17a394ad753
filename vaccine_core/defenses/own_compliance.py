"""The model's own compliance with harmful requests: another rejected side for the preference term, and
a choice of which harmful requests the alignment teaches the model to refuse.

The preference term's first source (``defenses.data.booster_pairs``) is JailbreakBench's judged-harmful
answers, whose requests are topically matched to the borderline-benign evaluation set and whose answers
another model wrote: learning to refuse them lowered every refusal together in align120
(benchmarks/results/safety-defenses-plan.md). This source changes both at once:

* requests: the harmful instructions of ``alignment/safe_refusals.jsonl`` that the caller leaves in (never
  the base's own alignment pairs nor an evaluated prompt: the caller passes both as ``exclude``);
* answers: what the model to be aligned writes itself (greedy, generated once and cached under
  VACCINE_HOME by the requests and the model's weights), kept where the judge flags them harmful.

The same verdicts choose alignment data (``judged_safety_rows``): safe_refusals holds refusals to requests
that only sound harmful ("compare the parenting styles of ..."), and a refusal learnt there is a refusal
of a topic. Keeping the requests whose answer, written by the model itself, the judge reads as harmful
is meant to teach a refusal where complying would do harm. Measured on the default 135M model
(docs/safety-results.md, "The shipped base"): at the same count of refusals it refuses borderline-benign
requests as often as a random draw does.
"""

import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

from vaccine_core.answer_cache import answered_once, cache_key
from vaccine_core.mixing import SAFETY_FILE, read_jsonl
from vaccine_core.moderation.base import Moderator
from vaccine_core.moderation.refusal import is_refusal
from vaccine_core.settings import get_settings
from vaccine_core.text import normalised

ANSWER_TOKENS = 96  # as the borderline answers: long enough for the judge to see compliance


def harmful_requests(data_dir: Path, count: int, seed: int, exclude: Collection[str]) -> list[str]:
    """``count`` distinct safe_refusals instructions (no extra input) whose normalised text is not in
    ``exclude``, sampled with ``seed``."""
    pool = sorted(
        {
            row["instruction"]
            for row in read_jsonl(Path(data_dir) / SAFETY_FILE)
            if not row.get("input") and normalised(row["instruction"]) not in exclude
        }
    )
    if count > len(pool):
        raise ValueError(f"asked for {count} harmful requests; {len(pool)} are left after exclusions")
    return random.Random(seed).sample(pool, count)


def own_answers(requests: list[str], model: str) -> list[str]:
    """The model's greedy answers to ``requests``, generated once per (requests, weights)."""
    from vaccine_core.models import resolve_model

    key = cache_key(requests, resolve_model(model), ANSWER_TOKENS)
    path = get_settings().home / "defenses" / f"own-answers-{key}.jsonl"
    asked = [{"request": request} for request in requests]
    rows = answered_once(path, asked, model, ANSWER_TOKENS, what="harmful requests")
    return [row["answer"] for row in rows]


def own_compliance(
    data_dir: Path,
    model: str,
    judge: Moderator,
    *,
    requests: int,
    exclude: Collection[str],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """(instruction, output) rows of the model's own answers to ``requests`` harmful requests, kept where
    ``judge`` flags the answer: the harmful side of preference pairs (``preference_pairs(harmful=...)``)."""
    asked = harmful_requests(data_dir, requests, seed, exclude)
    answers = own_answers(asked, model)
    verdicts = judge.score(list(zip(asked, answers, strict=True)))
    return [
        {"instruction": request, "input": "", "output": answer}
        for request, answer, verdict in zip(asked, answers, verdicts, strict=True)
        if verdict.flagged and answer.strip()
    ]


def judged_safety_rows(
    data_dir: Path,
    model: str,
    judge: Moderator,
    *,
    count: int,
    requests: int,
    exclude: Collection[str],
    seed: int = 0,
    refusing: bool = False,
) -> list[dict[str, Any]]:
    """``count`` safe_refusals rows (harmful request, its safe answer), drawn with ``seed`` from the
    ``requests`` sampled requests whose own answer ``judge`` flags (``own_compliance``); the first row of
    the file for each request, and with ``refusing`` only where that answer is a refusal."""
    flagged = {row["instruction"] for row in own_compliance(
        data_dir, model, judge, requests=requests, exclude=exclude, seed=seed
    )}  # fmt: skip
    safe_answer: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(Path(data_dir) / SAFETY_FILE):
        if row["instruction"] in flagged and not row.get("input"):
            safe_answer.setdefault(row["instruction"], row)
    if refusing:
        safe_answer = {request: row for request, row in safe_answer.items() if is_refusal(row["output"])}
    if count > len(safe_answer):
        raise ValueError(
            f"asked for {count} judged safety pairs; the judge flagged {len(safe_answer)} answers"
        )
    chosen = random.Random(seed).sample(sorted(safe_answer), count)
    return [safe_answer[request] for request in chosen]
