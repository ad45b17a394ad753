"""A model's greedy answers to a fixed list of requests, generated once and then read from VACCINE_HOME.

The borderline answers the judge trains on and the own compliance the preference term may reject both
come from here. A cache is keyed by the requests, the model's weights (spec and sha256, not where they
were converted to, so every ``VACCINE_HOME`` with the same model shares a key) and the answer length.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaccine_core.build_lock import building
from vaccine_core.mixing import read_jsonl, write_rows

if TYPE_CHECKING:  # models.py imports torch and transformers, which a cache key does not need
    from vaccine_core.models import ResolvedModel

log = logging.getLogger(__name__)


def cache_key(requests: Any, model: "ResolvedModel", max_new_tokens: int) -> str:
    """12 hex digits of the requests (anything JSON holds), the weights and the answer length."""
    payload = json.dumps([requests, model.spec, model.sha256, max_new_tokens])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def answered_once(
    path: Path,
    rows: list[dict[str, Any]],
    model: str,
    max_new_tokens: int,
    *,
    what: str = "requests",
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """``rows`` (each with a "request") with the model's greedy "answer" added, written to ``path`` once;
    later calls read ``path``."""
    if path.is_file():
        return read_jsonl(path)
    with building(path):
        if path.is_file():  # another worker wrote them while this one waited
            return read_jsonl(path)
        from vaccine_core.generation import generate
        from vaccine_core.inference import load_for_inference

        log.info("the model %s answers %d %s once (cached at %s)", model, len(rows), what, path)
        loaded = load_for_inference(model)
        answers = generate(
            loaded.model,
            loaded.tokenizer,
            [[{"role": "user", "content": row["request"]}] for row in rows],
            max_new_tokens=max_new_tokens,
            on_batch=on_batch,
        )
        answered = [{**row, "answer": answer} for row, answer in zip(rows, answers, strict=True)]
        staging = path.with_suffix(".partial")  # a run stopped while writing leaves no cache behind
        write_rows(staging, answered)
        staging.rename(path)
        return answered
