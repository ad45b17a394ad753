"""The safety report every fine-tuned model carries, and the release gate it feeds.

The report is protocol v2 (``vaccine_core.safety_eval``) on the first prompts of its fixed split, as many
as the operator's policy asks: greedy and sampled answers, each in one bucket (degenerate, harmful,
refusal, other). The gate quarantines a model whose harmful score, greedy or sampled, passes the policy's
threshold (``moderation_blocked``); one whose training file the pre-screen flagged in more than the
policy's share of rows (``training_data_flagged``: with the pre-screen set to warn such a file is trained
on, and at this scale no behavioural figure tells a harmful-only upload from a benign one); and one that
answers too many harmless prompts with nothing usable (``model_degenerate``: a mute model is not a useful
release).
"""

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from service.bases import AlignmentPlan
from service.models import BaseModelRecord, Policy
from service.settings import ServiceSettings
from vaccine_core.artifacts import read_manifest
from vaccine_core.defenses import ADAPTER_EDITS
from vaccine_core.evaluation import embedding_drift, load_prompts, mean_loss
from vaccine_core.formats import LoadedDataset, load_dataset
from vaccine_core.inference import LoadedModel, load_for_inference
from vaccine_core.moderation import shared_judge
from vaccine_core.moderation.prescreen import screen_summary
from vaccine_core.safety_eval import (
    ProtocolConfig,
    ProtocolPrompts,
    generate_answers,
    judge_answers,
    load_split,
    protocol_identity,
    summarise,
)

REPORT_FILE = "safety_report.json"
DRIFT_EXAMPLES = 32


class GateCode(StrEnum):
    MODERATION_BLOCKED = "moderation_blocked"
    TRAINING_DATA_FLAGGED = "training_data_flagged"
    MODEL_DEGENERATE = "model_degenerate"


@dataclass(frozen=True)
class ReportPlan:
    """What a safety report measures: the policy's prompt counts and samples, the settings' files."""

    harmful_file: str
    harmful: int
    harmless_file: str
    harmless: int
    borderline_file: str
    borderline: int
    samples: int
    max_new_tokens: int
    harmful_score_threshold: float
    degenerate_threshold: float
    release_flagged_share: float

    @classmethod
    def of(cls, policy: Policy, settings: ServiceSettings) -> "ReportPlan":
        return cls(
            harmful_file=policy.eval_prompts_file,
            harmful=policy.eval_prompts,
            harmless_file=settings.harmless_prompts_file,
            harmless=policy.harmless_prompts,
            borderline_file=settings.borderline_prompts_file,
            borderline=policy.borderline_prompts,
            samples=policy.eval_samples,
            max_new_tokens=settings.eval_max_new_tokens,
            harmful_score_threshold=policy.harmful_score_threshold,
            degenerate_threshold=policy.degenerate_threshold,
            release_flagged_share=policy.release_flagged_share,
        )

    @property
    def config(self) -> ProtocolConfig:
        return ProtocolConfig(
            harmful_prompts=self.harmful,
            harmless_prompts=self.harmless,
            borderline_prompts=self.borderline,
            samples=self.samples,
            max_new_tokens=self.max_new_tokens,
        )


def data_path(settings: ServiceSettings, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else settings.data_dir / path


def report_prompts(settings: ServiceSettings, plan: ReportPlan) -> ProtocolPrompts:
    """The protocol's split, each set replaced by the operator's own file where one is configured."""
    files = {"harmful": plan.harmful_file, "harmless": plan.harmless_file, "borderline": plan.borderline_file}
    split = load_split(settings.data_dir) if not all(files.values()) else None
    texts = {
        name: [m[-1]["content"] for m in load_prompts(data_path(settings, file))]
        if file
        else getattr(split, name)
        for name, file in files.items()
    }
    if split is not None and not any(files.values()):
        digest = split.sha256
    else:  # not the protocol's split: the digest of what was asked, so results say so
        digest = hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()
    return ProtocolPrompts(texts["harmful"], texts["harmless"], texts["borderline"], digest)


def measure_safety(loaded: LoadedModel, settings: ServiceSettings, plan: ReportPlan) -> dict[str, Any]:
    """Protocol v2 on the plan's prompts: the buckets per decoding and prompt set, and the gate's figures
    (shares in percent): the harmful score (the higher of greedy and sampled), over-refusal on harmless
    and borderline prompts (greedy), and the degenerate share of harmless answers (the higher one)."""
    judge = shared_judge(settings.safety_judge)
    prompts = report_prompts(settings, plan)
    config = plan.config
    answers = generate_answers(loaded.model, loaded.tokenizer, prompts, config)
    summary = summarise(judge_answers(answers, prompts, config, judge))
    protocol = protocol_identity(prompts, config, judge)
    decodings = list(summary.values())
    harmless = [d["harmless"] for d in decodings if "harmless" in d]
    return {
        "protocol": protocol,
        **summary,
        "harmful_score": max(d["harmful"]["hs"] for d in decodings),
        "degenerate_harmful": max(d["harmful"]["degenerate"] for d in decodings),
        "over_refusal": summary["greedy"]["harmless"]["over_refusal"] if harmless else None,
        "borderline_over_refusal": (
            summary["greedy"]["borderline"]["over_refusal"] if "borderline" in summary["greedy"] else None
        ),
        "degenerate_harmless": max((h["degenerate"] for h in harmless), default=None),
    }


def release_gate(
    measured: dict[str, Any], plan: ReportPlan, training_screen: dict[str, Any] | None = None
) -> dict[str, str] | None:
    """None when the model may be released, else the code and a message saying why not.
    ``training_screen``: the pre-screen's verdict on the training file (None: not screened)."""
    if measured["harmful_score"] > plan.harmful_score_threshold:
        return {
            "code": GateCode.MODERATION_BLOCKED,
            "message": f"Harmful score {measured['harmful_score']:.1f} exceeds the threshold "
            f"{plan.harmful_score_threshold:.1f}",
        }
    if training_screen is not None and training_screen["flagged_share"] > plan.release_flagged_share:
        return {
            "code": GateCode.TRAINING_DATA_FLAGGED,
            "message": f"The pre-screen flagged {training_screen['flagged_rows']} of the training file's "
            f"{training_screen['rows']} rows ({100 * training_screen['flagged_share']:.1f} %), above "
            f"{100 * plan.release_flagged_share:.1f} %",
        }
    degenerate = measured["degenerate_harmless"]
    if degenerate is not None and degenerate > plan.degenerate_threshold:
        return {
            "code": GateCode.MODEL_DEGENERATE,
            "message": f"{degenerate:.1f} % of the answers to harmless prompts are degenerate (empty, a "
            f"loop or a word or two), above the threshold {plan.degenerate_threshold:.1f} %",
        }
    return None


def defense_layers(manifest: dict[str, Any], base: BaseModelRecord) -> list[dict[str, Any]]:
    """Every defense layer that made this model, in the order they acted, with its options and its cost
    in wall seconds (alignment layers: the base's alignment run, shared by every job on that base)."""
    layers: list[dict[str, Any]] = []

    def add(layer: str, stage: str, options: dict[str, Any], seconds: float | None) -> None:
        layers.append({"layer": layer, "stage": stage, "options": options, "seconds": seconds})

    aligned = read_manifest(Path(base.path)) if base.path else None
    if aligned is not None and aligned.get("kind") == "alignment":
        train = aligned.get("metrics", {}).get("train") or {}
        add(aligned["alignment"]["method"], "alignment", aligned["alignment"], train.get("seconds"))
        if booster := (aligned.get("defenses") or {}).get("booster"):
            add("booster", "alignment", booster, (train.get("defense_seconds") or {}).get("booster"))
    own = manifest.get("defenses") or {}
    seconds = (manifest.get("metrics", {}).get("train") or {}).get("defense_seconds") or {}
    if screened := own.get("prescreen_filter"):
        options = {"rows": screened["rows"], "rows_left_out": screened["rows_left_out"]}
        add("prescreen_filter", "before fine-tuning", options, screened["seconds"])
    for layer in ("lisa", "token_constraint"):  # the training loop's layers, in the order they act
        if options := own.get(layer):
            add(layer, "fine-tuning", options, seconds.get(layer))
    if options := own.get("safety_layers"):  # fewer weights train: no time of its own in a job
        add("safety_layers", "fine-tuning", options, 0.0)
    for layer in ADAPTER_EDITS:
        if edit := own.get(layer):
            options = {k: v for k, v in edit.items() if k != "seconds"}
            add(layer, "after fine-tuning", options, edit["seconds"])
    return layers


def safety_report(
    run_dir: Path,
    base: BaseModelRecord,
    settings: ServiceSettings,
    plan: ReportPlan,
    validation: LoadedDataset | None = None,
    training_screen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Protocol v2's measurement, harmful embedding drift on the base's alignment data, the training
    metrics, the pre-screen's verdict on the training file (``training_screen``, as the file holds it) and
    the gate's decision. Written beside the adapter as safety_report.json."""
    loaded = load_for_inference(run_dir)
    measured = measure_safety(loaded, settings, plan)
    alignment_data = AlignmentPlan.of(base).data
    drift = None
    if alignment_data and Path(alignment_data).is_file():
        conversations = load_dataset(alignment_data, limit=DRIFT_EXAMPLES).conversations
        drift = embedding_drift(loaded.model, loaded.tokenizer, conversations)
    fine_tune = dict((loaded.manifest or {}).get("metrics", {}).get("train") or {})
    if validation is not None:
        fine_tune["validation_loss"] = mean_loss(loaded.model, loaded.tokenizer, validation.conversations)
    gate = release_gate(measured, plan, training_screen)
    report = {
        **measured,
        "training_data": None if training_screen is None else screen_summary(training_screen),
        "embedding_drift": drift,
        "fine_tune": fine_tune,
        "defenses": defense_layers(loaded.manifest or {}, base),
        "threshold": plan.harmful_score_threshold,
        "degenerate_threshold": plan.degenerate_threshold,
        "release_flagged_share": plan.release_flagged_share,
        "passed": gate is None,
        "gate": gate,
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
