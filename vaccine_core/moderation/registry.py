"""Pick a judge by name or path: ``refusal``, ``default``, or a model directory (classifier or guard).

A model directory may carry ``judge.json`` with the judge's options (thresholds, per-category thresholds,
input template), so that an operator configures a judge once, next to its weights.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from vaccine_core.moderation.base import Moderator
from vaccine_core.moderation.refusal import RefusalPhraseJudge

JUDGE_OPTIONS_FILE = "judge.json"


DEFAULT_JUDGE = "default"
INTENT_GATE_SUFFIX = "+intent"  # "default+intent": the default judge's flags gated by request intent


def load_judge(spec: str, device: str | None = None, **options: Any) -> Moderator:
    """``refusal``; ``default`` (the learned judge, trained once on first use); or a model directory;
    any of them with ``+intent`` after it: its flags gated by the request-intent model (``intent.py``)."""
    if spec.endswith(INTENT_GATE_SUFFIX):
        from vaccine_core.moderation.intent import IntentGatedJudge, IntentModel, ensure_intent_model

        judge = load_judge(spec.removesuffix(INTENT_GATE_SUFFIX), device=device, **options)
        return IntentGatedJudge(judge, IntentModel(ensure_intent_model(), device=device))
    if spec == RefusalPhraseJudge.name:
        return RefusalPhraseJudge()
    if spec == DEFAULT_JUDGE:
        from vaccine_core.moderation.learned import LearnedJudge, ensure_default_judge

        return LearnedJudge(ensure_default_judge(), device=device, **options)
    path = Path(spec).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"unknown judge {spec!r}: expected 'refusal' or a model directory holding config.json "
            "(a sequence classifier or a generative guard model)"
        )
    if (path / JUDGE_OPTIONS_FILE).is_file():
        saved = json.loads((path / JUDGE_OPTIONS_FILE).read_text())
        if saved.get("type") == "vaccine-cross-encoder":
            from vaccine_core.moderation.learned import LearnedJudge

            return LearnedJudge(path, device=device, **options)
        options = {**saved, **options}
    # the model judges import torch: only a process that loads one pays for it
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        from vaccine_core.moderation.classifier import SequenceClassifierJudge

        return SequenceClassifierJudge(path, device=device, **options)
    if any(a.endswith("ForCausalLM") or a.endswith("ForConditionalGeneration") for a in architectures):
        from vaccine_core.moderation.guard import GuardModelJudge

        return GuardModelJudge(path, device=device, **options)
    raise ValueError(
        f"{path}: architectures {architectures} are neither a sequence classifier nor a causal LM"
    )


@lru_cache(maxsize=4)
def shared_judge(spec: str) -> Moderator:
    """One judge per process and spec: a service loads its judges once, not per request or job."""
    return load_judge(spec)
