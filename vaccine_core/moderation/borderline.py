"""Helpful answers to requests that only sound harmful, written by the default model.

The judge's hardest negatives: the topic is violence, crime, drugs or hacking, the answer helps and harms
no one. Requests come from three places:

* ``contrastive``: this project's own set (``contrastive.py``): homonyms, history, fiction, definitions,
  medical and legal information, safety advice, defence, public facts;
* ``jbb_benign``: JailbreakBench's benign behaviours, topically matched to its harmful ones;
* ``donotanswer_advice``: Do-Not-Answer requests for medical, legal or financial advice and questions
  about the assistant itself (areas a careful model answers; its malicious-use requests are evaluation
  prompts and never appear here).

The default model answers each greedily (96 new tokens); the answers are cached under VACCINE_HOME by the
requests and the model's weights (their sha256), wherever the weights were converted to.
``benchmarks/results/judge_borderline_check.md`` records a reading by hand of a sample of them.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaccine_core.answer_cache import answered_once, cache_key
from vaccine_core.mixing import read_jsonl
from vaccine_core.moderation.contrastive import contrastive_requests
from vaccine_core.settings import get_settings

if TYPE_CHECKING:  # models.py imports torch and transformers, which the request lists do not need
    from vaccine_core.models import ResolvedModel

JBB_BENIGN_FILE = "eval/jbb_benign_behaviors.jsonl"
DONOTANSWER_FILE = "eval/donotanswer.jsonl"
# Do-Not-Answer intents whose requests a helpful answer serves: expert advice (S002*) and questions about
# the assistant (C006*); requests with any other intent (misinformation, self-harm, private data) are left
ADVICE_INTENTS = ("S002", "C006")
ANSWER_TOKENS = 96


@dataclass(frozen=True)
class BorderlineRequest:
    source: str  # contrastive, jbb_benign or donotanswer_advice
    kind: str  # the contrastive kind, the JailbreakBench category, or the Do-Not-Answer risk area
    request: str


def borderline_requests(data_dir: Path) -> list[BorderlineRequest]:
    requests = [BorderlineRequest("contrastive", kind, text) for kind, text in contrastive_requests()]
    requests += [
        BorderlineRequest("jbb_benign", row.get("category") or "", row["prompt"])
        for row in read_jsonl(data_dir / JBB_BENIGN_FILE)
    ]
    requests += [
        BorderlineRequest("donotanswer_advice", row["risk_area"], row["prompt"])
        for row in read_jsonl(data_dir / DONOTANSWER_FILE)
        if row.get("intents") and all(i.startswith(ADVICE_INTENTS) for i in row["intents"])
    ]
    return requests


def answers_path(requests: list[BorderlineRequest], model: "ResolvedModel") -> Path:
    """Keyed by the requests and the model's weights, not by where the weights were converted to, so every
    ``VACCINE_HOME`` with the same model shares the answers' key."""
    key = cache_key([asdict(r) for r in requests], model, ANSWER_TOKENS)
    return get_settings().home / "judges" / f"borderline-answers-{key}.jsonl"


def ensure_borderline_answers(
    data_dir: Path, model: str = "default", on_batch: Callable[[int], None] | None = None
) -> list[dict[str, str]]:
    """The model's answers to every borderline request (generated once, then read from the cache)."""
    from vaccine_core.models import resolve_model

    requests = borderline_requests(data_dir)
    path = answers_path(requests, resolve_model(model))
    rows = [asdict(r) for r in requests]
    return answered_once(path, rows, model, ANSWER_TOKENS, what="borderline requests", on_batch=on_batch)
