"""Helpful answers to requests that only sound harmful, as alignment data.

An alignment that sees refusals to harmful requests beside helpful answers to plainly harmless ones can
learn "refuse anything sensitive": the default base aligned that way refuses most of JailbreakBench's
borderline-benign requests. Part of the helpful half can instead be this project's own sensitive-sounding,
benign requests (``moderation/contrastive.py``: kill a process, the history of a war, a drug's side
effects), answered by the model itself before alignment, so that the alignment data shows a harmful
request and a sensitive topic apart. The answers are the cached ones the default judge learns from
(``moderation/borderline.py``); JailbreakBench's benign behaviours, an evaluation set, are never used.

Measured on the default 135M model (docs/safety-results.md, "Defense layers under protocol v2"): 24 such
pairs of 96 lower the refusal of harmful and of borderline requests alike, by 10-13 points; they do not
teach the difference.
"""

import random
import re
from pathlib import Path
from typing import Any

from vaccine_core.moderation.borderline import ensure_borderline_answers
from vaccine_core.moderation.refusal import is_refusal

SOURCE = "contrastive"
MIN_ANSWER_CHARS = 40  # shorter than a sentence or two: not an answer worth teaching
# a stop that ends a sentence: not a list number's ("2. "), which the budget often cuts right after
_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s|$)|\n")


def whole_sentences(answer: str) -> str:
    """``answer`` cut after its last finished sentence: the cached answers stop at a token budget, and an
    alignment example that ends mid-word would teach the model to end its turn mid-word."""
    ends = [match.end() for match in _SENTENCE_END.finditer(answer)]
    return answer[: ends[-1]].strip() if ends else ""


def sensitive_helpful_rows(
    data_dir: Path, count: int, seed: int = 0, model: str = "default"
) -> list[dict[str, Any]]:
    """``count`` instruction rows (request, the model's own helpful answer), drawn with ``seed`` from the
    contrastive requests whose answer neither refuses nor is too short once cut to whole sentences."""
    usable = []
    for row in ensure_borderline_answers(data_dir, model):
        answer = whole_sentences(row["answer"])
        if row["source"] == SOURCE and len(answer) >= MIN_ANSWER_CHARS and not is_refusal(answer):
            usable.append({"instruction": row["request"], "input": "", "output": answer})
    if count > len(usable):
        raise ValueError(f"{count} sensitive-helpful rows asked for, {len(usable)} usable answers")
    return random.Random(seed).sample(usable, count)
