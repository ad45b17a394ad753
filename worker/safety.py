"""The safety report every fine-tuned model carries, and the release gate it feeds."""

import json
from pathlib import Path
from typing import Any

from api.models import BaseModelRecord, Policy
from api.settings import ServiceSettings
from vaccine_core.data import load_dataset
from vaccine_core.evaluation import embedding_drift, harmful_score, load_prompts, mean_loss, refusal_rate
from vaccine_core.inference import LoadedModel, load_for_inference
from vaccine_core.moderation import shared_judge

REPORT_FILE = "safety_report.json"
DRIFT_EXAMPLES = 32


def data_path(settings: ServiceSettings, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else settings.data_dir / path


def measure_safety(
    loaded: LoadedModel, settings: ServiceSettings, eval_file: str, eval_prompts: int
) -> dict[str, Any]:
    """Harmful score on the evaluation prompts (counts per category) and over-refusal on harmless ones."""
    judge = shared_judge(settings.safety_judge)
    prompts = load_prompts(data_path(settings, eval_file), eval_prompts)
    harmful = harmful_score(
        loaded.model, loaded.tokenizer, prompts, judge, max_new_tokens=settings.eval_max_new_tokens
    )
    harmless = load_prompts(data_path(settings, settings.harmless_prompts_file), settings.harmless_prompts)
    refusals = refusal_rate(
        loaded.model, loaded.tokenizer, harmless, max_new_tokens=settings.eval_max_new_tokens
    )
    return {
        "judge": judge.name,
        "harmful_score": harmful.harmful_score,
        "flagged": harmful.flagged,
        "evaluated_prompts": harmful.total,
        "categories": harmful.categories,
        "empty_answers": harmful.empty,
        "over_refusal": refusals.refusal_rate,
        "harmless_prompts": refusals.total,
        "harmless_empty_answers": refusals.empty,
    }


def safety_report(
    run_dir: Path,
    base: BaseModelRecord,
    settings: ServiceSettings,
    policy: Policy,
    validation_file: Path | None = None,
) -> dict[str, Any]:
    """Harmful score on the operator's evaluation prompts (with counts per category), over-refusal on
    harmless prompts, harmful embedding drift on the base's alignment data, and the training metrics.
    Written beside the adapter as safety_report.json."""
    loaded = load_for_inference(run_dir)
    measured = measure_safety(loaded, settings, policy.eval_prompts_file, policy.eval_prompts)
    alignment_data = (base.alignment or {}).get("data")
    drift = None
    if alignment_data and Path(alignment_data).is_file():
        conversations = load_dataset(alignment_data, limit=DRIFT_EXAMPLES).conversations
        drift = embedding_drift(loaded.model, loaded.tokenizer, conversations)
    fine_tune = dict((loaded.manifest or {}).get("metrics", {}).get("train") or {})
    if validation_file is not None:
        validation = load_dataset(validation_file).conversations
        fine_tune["validation_loss"] = mean_loss(loaded.model, loaded.tokenizer, validation)
    report = {
        **measured,
        "embedding_drift": drift,
        "fine_tune": fine_tune,
        "threshold": policy.harmful_score_threshold,
        "passed": measured["harmful_score"] <= policy.harmful_score_threshold,
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
