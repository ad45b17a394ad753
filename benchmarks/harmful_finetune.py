"""Harmful fine-tuning benchmark: the Vaccine paper's Table 1 at small scale.

For every alignment arm (the model as shipped, SFT alignment, Vaccine alignment at several rho, and Vaccine
with safety pairs mixed into the user's fine-tuning data) and every harmful fraction p, fine-tune the
aligned base on n SST-2 rows of which round(n * p) are BeaverTails harmful pairs; then measure

* harmful score (HS): share of held-out AdvBench + HarmBench prompts whose answer the default learned judge
  flags, and beside it the refusal-phrase judge on the same answers;
* fine-tune accuracy (FA) on SST-2 validation rows;
* over-refusal: share of harmless prompts refused;
* harmful embedding drift on the alignment's safety pairs (fine-tuned vs its aligned base).

Each cell is the mean and standard deviation over seeds; a seed draws the fine-tuning rows, their order
and the adapter's initialisation (one alignment per arm, seed 0, shared by the seeds).

    .venv/bin/python benchmarks/harmful_finetune.py            # default sizes: <= 2 h on 2 CPU cores
    .venv/bin/python benchmarks/harmful_finetune.py --quick    # <= 20 min on 2 CPU cores
    .venv/bin/python benchmarks/harmful_finetune.py --full     # the paper's sizes: a GPU job

Writes benchmarks/results/harmful_finetune-<profile>.{json,md} and -hs.png / -fa.png. Everything trained
or generated is cached under $VACCINE_HOME/benchmarks/harmful_finetune, keyed by a hash of its inputs,
so a rerun (or a larger run sharing alignments) only computes what is new.
"""

import argparse
import functools
import json
import logging
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, provenance
from harmful_finetune_report import write_report

from vaccine_core.align import align
from vaccine_core.artifacts import MANIFEST, read_manifest, write_manifest
from vaccine_core.artifacts import value_key as digest  # every cached run and answer set is named by it
from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig, alignment_defaults
from vaccine_core.defenses import (
    BackdoorAlignConfig,
    BoosterConfig,
    LisaConfig,
    PreferenceConfig,
    RestaConfig,
    SafeLoraConfig,
    SafetyLayersConfig,
    StepDefenses,
    TokenConstraintConfig,
)
from vaccine_core.defenses.backdoor_align import backdoor_rows, secret_prompt, write_secret
from vaccine_core.defenses.config import LISA_SAFETY_PAIRS, PREFERENCE_PAIRS, RestaVector
from vaccine_core.defenses.data import booster_pairs, helpful_pairs, lisa_pairs, preference_pairs, user_turn
from vaccine_core.defenses.harmful_adapter import (
    adapter_key,
    build_adapter,
    build_harmful_adapter,
    harmful_rows,
)
from vaccine_core.defenses.own_compliance import judged_safety_rows, own_compliance
from vaccine_core.defenses.resta import benign_adapter_dir, harmful_adapter_dir
from vaccine_core.defenses.safety_layers import base_safety_layers
from vaccine_core.evaluation import embedding_drift, judge_answers, load_prompts, refusal_rate, task_accuracy
from vaccine_core.finetune import apply_resta, apply_safe_lora, finetune
from vaccine_core.formats import parse_rows
from vaccine_core.generation import generate
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import (
    HARMFUL_FILE,
    SAFETY_FILE,
    alignment_rows,
    build_mix,
    read_jsonl,
    safety_rows,
    write_rows,
)
from vaccine_core.models import load_tokenizer, resolve_model
from vaccine_core.moderation import load_judge
from vaccine_core.moderation.base import Moderator
from vaccine_core.moderation.prescreen import prescreen, without_flagged
from vaccine_core.moderation.refusal import is_refusal
from vaccine_core.settings import get_settings
from vaccine_core.tasks import get_task
from vaccine_core.text import normalised

log = logging.getLogger("harmful_finetune")
RESULTS = Path(__file__).parent / "results"
HARMFUL_EVAL_FILES = ("eval/advbench.jsonl", "eval/harmbench_val.jsonl")
HARMLESS_EVAL_FILE = "eval/harmless_val.jsonl"
# harmful requests the model answers for the "own" preference source: of these, the judged-harmful answers
# must cover the preference pairs' harmful half (PREFERENCE_PAIRS // 2)
OWN_COMPLIANCE_REQUESTS = 1200  # 10.8 % flagged in 400: 1,200 for 100 with margin (safety-defenses-plan.md)


@dataclass(frozen=True)
class Arm:
    """A row of the table: how the base was aligned, and what the fine-tuning stage adds."""

    name: str
    method: str | None  # None: the model as shipped, never aligned
    rho: float = 0.0
    safety_mix: int = 0  # safety pairs added to every fine-tuning set (a defense beyond the paper)
    booster: bool = False  # Booster's attenuation term in the alignment (BoosterConfig's defaults)
    preference: bool = False  # the DPO preference term in the alignment (PreferenceConfig's defaults)
    # its harmful side: JailbreakBench's judged-harmful answers, or the model's own judged compliance with
    # safe_refusals' harmful instructions (defenses.own_compliance)
    preference_source: Literal["jailbreakbench", "own"] = "jailbreakbench"
    lisa: bool = False  # Lisa during the user's fine-tuning (LisaConfig's defaults unless set below)
    lisa_rho: float | None = None  # another proximal strength than LisaConfig's default
    lisa_finetune_steps: int | None = None  # another count of user steps per safety step
    lisa_helpful_share: float = 0.0  # of Lisa's pairs, the share that are helpful Alpaca answers
    safe_lora: bool = False  # Safe LoRA on the user's adapter (SafeLoraConfig's defaults)
    safe_lora_threshold: float | None = None  # another threshold than SafeLoraConfig's default
    resta: float | None = None  # RESTA's scale: the base's alignment update added to the user's adapter again
    # RESTA's safety vector: the base's alignment update, or RESTA's own (the base minus itself fine-tuned
    # on harmful pairs: Benchmark.harmful_adapter)
    resta_vector: RestaVector = "alignment"
    resta_outside_user: bool = False  # only the vector's part outside the user's update (RestaConfig)
    # the service's upload pre-screen as a data filter: the attack's rows it flags never train
    prescreen_filter: bool = False
    # the token-wise constraint on the user's fine-tuning (TokenConstraintConfig's defaults, the paper's)
    token_constraint: bool = False
    # the base's safety layers left out of the user's fine-tuning (SafetyLayersConfig's defaults)
    safety_layers: bool = False
    # safety pairs behind a secret system prompt, served first in every conversation (BackdoorAlign;
    # BackdoorAlignConfig's defaults: the paper's 11 pairs, a shorter secret)
    backdoor_align: bool = False
    # of the alignment's helpful pairs, how many answer requests that only sound harmful (sensitive_helpful)
    sensitive_helpful: int = 0
    # alignment on other data than the profile's, in as many optimizer steps (fewer epochs over more pairs)
    alignment_pairs: int | None = None  # safety + helpful pairs; None: the profile's
    alignment_safety_share: float = 0.5  # of those pairs, the share that are safety pairs
    # the alignment's safety pairs: drawn from all of safe_refusals; or replaced by as many drawn from the
    # requests whose answer by the unaligned model the default judge flags (judged_safety_rows); or only
    # its refusing pairs replaced, by judged ones that refuse (the same count of refusals)
    safety_source: Literal["sampled", "judged", "judged-refusals"] = "sampled"

    def alignment_sizes(self, sizes: "Sizes") -> tuple[int, int, float]:
        """The safety pairs, helpful pairs and epochs this arm's base is aligned on: the profile's, or
        ``alignment_pairs`` split by ``alignment_safety_share`` over the epochs that keep the profile's
        number of examples seen (so the same steps)."""
        if self.alignment_pairs is None:
            return sizes.alignment_safety, sizes.alignment_helpful, sizes.alignment_epochs
        safety = round(self.alignment_pairs * self.alignment_safety_share)
        profile = sizes.alignment_safety + sizes.alignment_helpful
        epochs = sizes.alignment_epochs * profile / self.alignment_pairs
        return safety, self.alignment_pairs - safety, epochs

    def layers(self) -> list[str]:
        """The defense layers this arm runs beyond its base's alignment method, in the order they act."""
        switched = {
            "booster": self.booster,
            "preference": self.preference,
            "safety_mix": self.safety_mix > 0,
            "prescreen_filter": self.prescreen_filter,
            "lisa": self.lisa,
            "token_constraint": self.token_constraint,
            "safety_layers": self.safety_layers,
            "backdoor_align": self.backdoor_align,
            "safe_lora": self.safe_lora,
            "resta": self.resta is not None,
        }
        return [layer for layer, on in switched.items() if on]

    def lisa_config(self) -> LisaConfig | None:
        """Lisa's settings in this arm (None: no Lisa)."""
        if not self.lisa:
            return None
        changed = {"rho": self.lisa_rho, "finetune_steps": self.lisa_finetune_steps}
        return LisaConfig(**{name: value for name, value in changed.items() if value is not None})

    def token_constraint_config(self) -> TokenConstraintConfig | None:
        """The token constraint's settings in this arm (None: none)."""
        return TokenConstraintConfig() if self.token_constraint else None

    def safety_layers_config(self) -> SafetyLayersConfig | None:
        """How this arm locates the base's safety layers (None: it trains every layer)."""
        return SafetyLayersConfig() if self.safety_layers else None

    def backdoor_align_config(self) -> BackdoorAlignConfig | None:
        """The secret-prompt safety pairs this arm adds to the user's rows (None: none)."""
        return BackdoorAlignConfig() if self.backdoor_align else None

    def safe_lora_config(self) -> SafeLoraConfig | None:
        """The projection this arm applies to the user's adapter (None: none)."""
        if not self.safe_lora:
            return None
        threshold = self.safe_lora_threshold
        return SafeLoraConfig() if threshold is None else SafeLoraConfig(threshold=threshold)

    def resta_config(self) -> RestaConfig | None:
        """The re-alignment this arm applies to the user's adapter (None: none)."""
        if self.resta is None:
            return None
        return RestaConfig(scale=self.resta, vector=self.resta_vector, outside_user=self.resta_outside_user)


def ships_by_default(arm: Arm) -> bool:
    """Whether ``arm`` is the stack a fresh service runs: the default base's alignment and the default
    defense stack, as the service's own defaults declare them (not as any environment overrides them)."""
    from service.bases import AlignmentPlan
    from service.defenses import DefenseStack
    from service.settings import ServiceSettings

    plan, stack = AlignmentPlan(), DefenseStack()
    return (
        arm.method == plan.method
        and (arm.rho == plan.rho or plan.method != "vaccine")
        and arm.sensitive_helpful == plan.sensitive
        and arm.alignment_pairs is None
        and arm.safety_source == "sampled"
        and arm.booster == ServiceSettings.model_fields["default_alignment_booster"].default
        and not arm.preference
        and arm.safety_mix == 0
        and arm.lisa_config() == stack.lisa_config()
        and arm.lisa_helpful_share == 0
        and arm.safe_lora_config() == stack.projection()
        and arm.resta_config() == stack.realignment()
        and arm.prescreen_filter == stack.prescreen_filter
        and arm.token_constraint_config() == stack.constraint()
        and not arm.safety_layers
        and not arm.backdoor_align
    )


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("none", None),
        Arm("sft", "sft"),
        Arm("vaccine-rho1", "vaccine", rho=1.0),
        Arm("vaccine-rho2", "vaccine", rho=2.0),
        Arm("vaccine-rho5", "vaccine", rho=5.0),
        Arm("vaccine-rho2+safety-mix", "vaccine", rho=2.0, safety_mix=10),
        # alignment that shows a sensitive topic and a harmful request apart: half the helpful pairs
        Arm("sft+sensitive", "sft", sensitive_helpful=24),
        # refusals taught only where the model's own compliance reads as harmful, not where a topic does
        Arm("sft-judged-safety", "sft", safety_source="judged"),
        Arm("sft-judged-refusals", "sft", safety_source="judged-refusals"),
        # broader alignment data in the same steps (safety-defenses-plan.md, 2026-12-04 third session): 576
        # pairs seen once instead of 96 six times in align120, half safety or a quarter
        Arm("sft-broad", "sft", alignment_pairs=576),
        Arm("sft-broad-q", "sft", alignment_pairs=576, alignment_safety_share=0.25),
        Arm(
            "sft-broad-q+sensitive",
            "sft",
            alignment_pairs=576,
            alignment_safety_share=0.25,
            sensitive_helpful=144,
        ),
        # defense in depth: each layer alone, then stacks (Booster and Lisa over SFT unless Vaccine is named)
        Arm("booster", "sft", booster=True),
        # refuse the harmful request, answer the one that only sounds harmful: DPO on pairs of answers
        # beside the SFT alignment (safety-defenses-plan.md, 2026-12-04 fourth session)
        Arm("sft+preference", "sft", preference=True),
        Arm("sft+preference-own", "sft", preference=True, preference_source="own"),
        Arm("lisa", "sft", lisa=True),
        # gentler Lisa (safety-defenses-plan.md, 2026-12-04): a tenth of the pull, or half the safety steps
        Arm("lisa-rho0.1", "sft", lisa=True, lisa_rho=0.1),
        Arm("lisa-1in20", "sft", lisa=True, lisa_finetune_steps=19),
        # Lisa's alignment state on the alignment's own mix, half refusals and half helpful answers
        # (safety-defenses-plan.md, 2026-12-04 sixth session)
        Arm("lisa-mixed", "sft", lisa=True, lisa_helpful_share=0.5),
        # Lisa pulls towards its base: a base that refuses fewer harmless requests (sft-broad-q) under it
        Arm("sft-broad-q+lisa", "sft", alignment_pairs=576, alignment_safety_share=0.25, lisa=True),
        Arm("safe_lora", "sft", safe_lora=True),
        # the pre-screen leaves the rows it flags out of the upload (safety-defenses-plan.md, thirteenth
        # session)
        Arm("prescreen_filter", "sft", prescreen_filter=True),
        # the answers' first tokens held near the aligned base's (Qi et al. 2025; safety-defenses-plan.md,
        # fourteenth session), alone and after the pre-screen filter
        Arm("token_constraint", "sft", token_constraint=True),
        Arm("prescreen_filter+token_constraint", "sft", prescreen_filter=True, token_constraint=True),
        # the layers where the base tells harmful requests from harmless ones kept out of the user's
        # fine-tuning (Li et al. 2024, SPPFT; safety-defenses-plan.md, thirtieth session), alone and after
        # the pre-screen filter
        Arm("safety_layers", "sft", safety_layers=True),
        Arm("prescreen_filter+safety_layers", "sft", prescreen_filter=True, safety_layers=True),
        # 11 safety pairs under a secret system prompt of 64 random tokens, the secret served first in
        # every conversation (Wang et al. 2024, BackdoorAlign; safety-defenses-plan.md, thirty-second
        # session)
        Arm("backdoor_align", "sft", backdoor_align=True),
        # BackdoorAlign's own baseline: the same 11 safety pairs under the model's usual prompt, fixed after
        # one seed of its adapter run without the secret read safer than served behind it
        # (safety-defenses-plan.md, thirty-second session)
        Arm("sft+safety-mix", "sft", safety_mix=11),
        # the two layers that each passed the default's rule in one setting, stacked: alignment that answers
        # requests which only sound harmful, and the pre-screen filter (safety-defenses-plan.md, fifteenth
        # session)
        Arm("sft+sensitive+prescreen_filter", "sft", sensitive_helpful=24, prescreen_filter=True),
        # the base's alignment update added to the user's adapter once more (RESTA, Bhardwaj et al. 2024;
        # safety-defenses-plan.md, sixteenth session), alone and after the pre-screen filter
        Arm("resta", "sft", resta=1.0),
        Arm("prescreen_filter+resta", "sft", prescreen_filter=True, resta=1.0),
        # two smaller scales, fixed after RESTA's scale 1 answered 12 % of align120's prompts with nothing
        # and before any weak-long result (safety-defenses-plan.md, 17:54)
        Arm("resta-0.25", "sft", resta=0.25),
        Arm("resta-0.5", "sft", resta=0.5),
        # RESTA's own safety vector, at RESTA's scale, fixed after the alignment vector failed to confirm
        # (safety-defenses-plan.md, seventeenth session)
        Arm("resta-harmful", "sft", resta=1.0, resta_vector="harmful"),
        # the same vector at two smaller scales, fixed after scale 1 failed align120's FA and over-refusal
        # limits and passed weak-long, before either ran (safety-defenses-plan.md, seventeenth session)
        Arm("resta-harmful-0.25", "sft", resta=0.25, resta_vector="harmful"),
        Arm("resta-harmful-0.5", "sft", resta=0.5, resta_vector="harmful"),
        # the filter's benign rows, then the vector at 0.5: the filter acts where the upload's harmful rows
        # do the harm (align120), the vector where benign erosion does (weak-long) (safety-defenses-plan.md,
        # nineteenth session)
        Arm(
            "prescreen_filter+resta-harmful-0.5",
            "sft",
            prescreen_filter=True,
            resta=0.5,
            resta_vector="harmful",
        ),
        # the same stack with only the vector's part outside the user's update added, so the vector cannot
        # undo what the user's adapter trained along its own directions (safety-defenses-plan.md,
        # twenty-ninth session)
        Arm(
            "prescreen_filter+resta-harmful-0.5-outside",
            "sft",
            prescreen_filter=True,
            resta=0.5,
            resta_vector="harmful",
            resta_outside_user=True,
        ),
        # RESTA's harmful vector less its benign control (the base fine-tuned alike on helpful answers), so
        # the vector does not undo what any fine-tuning teaches; alone and stacked with the filter as the
        # harmful one was (safety-defenses-plan.md, thirty-third session)
        Arm("resta-contrast-0.5", "sft", resta=0.5, resta_vector="contrast"),
        Arm(
            "prescreen_filter+resta-contrast-0.5",
            "sft",
            prescreen_filter=True,
            resta=0.5,
            resta_vector="contrast",
        ),
        # thresholds by the share of layers they project (safety-defenses-plan.md): 0.1 ~14 %, 0.2 ~50 %
        Arm("safe_lora-t0.1", "sft", safe_lora=True, safe_lora_threshold=0.1),
        Arm("safe_lora-t0.2", "sft", safe_lora=True, safe_lora_threshold=0.2),
        Arm("vaccine+lisa", "vaccine", rho=2.0, lisa=True),
        Arm("booster+lisa", "sft", booster=True, lisa=True),
        Arm("vaccine+lisa+safe_lora", "vaccine", rho=2.0, lisa=True, safe_lora=True),
        Arm(
            "vaccine+lisa+safe_lora-t0.1",
            "vaccine",
            rho=2.0,
            lisa=True,
            safe_lora=True,
            safe_lora_threshold=0.1,
        ),
        Arm(
            "vaccine+lisa+safe_lora-t0.2",
            "vaccine",
            rho=2.0,
            lisa=True,
            safe_lora=True,
            safe_lora_threshold=0.2,
        ),
        Arm("booster+lisa+safe_lora", "sft", booster=True, lisa=True, safe_lora=True),
        Arm("vaccine+booster+lisa+safe_lora", "vaccine", rho=2.0, booster=True, lisa=True, safe_lora=True),
    )
}


def after_finetuning_copy(
    run: Path, out: Path, base: str, safe_lora: SafeLoraConfig | None, resta: RestaConfig | None
) -> None:
    """``run``'s adapter copied to ``out`` and edited there by the layers that act after fine-tuning, in
    ``finetune``'s order (Safe LoRA, then RESTA), its manifest saying so."""
    if out.exists():
        shutil.rmtree(out)  # no manifest: an interrupted copy, perhaps edited half-way
    shutil.copytree(run, out)
    (out / MANIFEST).unlink()  # written last: an interrupted copy is built again
    manifest = read_manifest(run)
    layers = dict(manifest.get("defenses") or {})
    if safe_lora is not None:
        layers["safe_lora"] = apply_safe_lora(out, base, safe_lora)
    if resta is not None:
        layers["resta"] = apply_resta(out, base, resta)
    written = ("format_version", "created_at", "software", "files")  # write_manifest's own keys
    kept = {key: value for key, value in manifest.items() if key not in written}
    write_manifest(out, kept | {"defenses": layers})


@dataclass
class Sizes:
    """Everything that sets the experiment's scale; a profile is one of these."""

    # alignment: safety refusals mixed with helpful Alpaca answers (refusals alone teach "refuse all")
    alignment_safety: int
    alignment_helpful: int
    alignment_epochs: float
    alignment_lr: float
    # the attack: n SST-2 rows, a fraction of them harmful, fine-tuned with a fresh LoRA adapter
    attack_n: int
    attack_epochs: float
    attack_lr: float
    attack_lora_alpha: float
    attack_batch: int
    # evaluation
    harmful_prompts: int  # split between AdvBench and HarmBench
    harmless_prompts: int
    task_rows: int
    drift_rows: int
    max_new_tokens: int
    max_length: int = 256
    # share of the attack's non-harmful rows that are helpful Alpaca answers instead of task rows
    attack_helpful_share: float = 0.0
    lisa_pairs: int = LISA_SAFETY_PAIRS
    arms: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


PROFILES: dict[str, Sizes] = {
    "quick": Sizes(
        alignment_safety=24, alignment_helpful=24, alignment_epochs=1, alignment_lr=1e-3,
        attack_n=20, attack_epochs=2, attack_lr=3e-4, attack_lora_alpha=8, attack_batch=5,
        harmful_prompts=16, harmless_prompts=8, task_rows=24, drift_rows=8, max_new_tokens=32,
        arms=["none", "sft", "vaccine-rho2"], fractions=[0.0, 0.2], seeds=[0],
    ),
    # Fixed before any method comparison was run, from cost and the probe: an attack of 60 steps
    # at lr 1e-4 taught nothing and one of 100 steps at 5e-4 broke every alignment, so this one sits
    # between them (20 steps at 5e-4, LoRA scale 1). ~95 s per attacked cell on 2 CPU cores.
    "default": Sizes(
        alignment_safety=48, alignment_helpful=48, alignment_epochs=2, alignment_lr=1e-3,
        attack_n=40, attack_epochs=2, attack_lr=5e-4, attack_lora_alpha=8, attack_batch=4,
        harmful_prompts=32, harmless_prompts=16, task_rows=48, drift_rows=16, max_new_tokens=48,
        arms=["none", "sft", "vaccine-rho2", "vaccine-rho2+safety-mix"],
    ),
    # The paper's sizes (../shared/docs/VACCINE.md): 2,000 alignment pairs for many epochs at lr 1e-3; the
    # attack 1,000 rows x 20 epochs at lr 1e-5 with a LoRA adapter of r 8, alpha 1; 500 harmful prompts.
    "full": Sizes(
        alignment_safety=1000, alignment_helpful=1000, alignment_epochs=50, alignment_lr=1e-3,
        attack_n=1000, attack_epochs=20, attack_lr=1e-5, attack_lora_alpha=1, attack_batch=5,
        harmful_prompts=500, harmless_prompts=200, task_rows=872, drift_rows=200, max_new_tokens=128,
        arms=list(ARMS),
    ),
}  # fmt: skip


def attack_config(sizes: Sizes, seed: int) -> TrainingConfig:
    """The attack's fine-tuning: a fresh LoRA adapter on the user's rows."""
    return TrainingConfig(
        epochs=sizes.attack_epochs,
        batch_size=sizes.attack_batch,
        learning_rate=sizes.attack_lr,
        weight_decay=0.0,
        max_length=sizes.max_length,
        seed=seed,
        lora=LoraSettings(r=8, alpha=sizes.attack_lora_alpha, dropout=0.1),
    )


@dataclass
class EvalSets:
    harmful: list[list[dict[str, str]]]
    harmless: list[list[dict[str, str]]]
    task_rows: list[dict[str, Any]]
    drift: list[Any]  # conversations: the alignment's safety pairs, where drift is measured

    def identity(self) -> str:
        return digest([self.harmful, self.harmless, self.task_rows, [c.messages for c in self.drift]])


def harmful_eval_prompts(data_dir: Path, count: int, seen: set[str]) -> list[list[dict[str, str]]]:
    """Harmful prompts no training step saw, half from AdvBench and half from HarmBench."""
    prompts: list[list[dict[str, str]]] = []
    for i, name in enumerate(HARMFUL_EVAL_FILES):
        want = count // len(HARMFUL_EVAL_FILES) + (i < count % len(HARMFUL_EVAL_FILES))
        fresh = [p for p in load_prompts(data_dir / name) if normalised(p[-1]["content"]) not in seen]
        prompts += random.Random(0).sample(fresh, min(want, len(fresh)))
    return prompts


class Benchmark:
    def __init__(self, sizes: Sizes, model: str, data_dir: Path, cache: Path, judge: str = "default"):
        self.sizes, self.model, self.data_dir, self.cache = sizes, model, data_dir, cache
        self.task = get_task("sst2")
        # "hs" is the main judge's score; the refusal-phrase judge reads the same answers beside it
        self.judges = {"main": load_judge(judge), "refusal": load_judge("refusal")}
        self.alignment = alignment_rows(data_dir, sizes.alignment_safety, sizes.alignment_helpful)
        self.aligned_on = {r["instruction"] for r in self.alignment}
        safety = read_jsonl(data_dir / SAFETY_FILE)
        safety_instructions = {r["instruction"] for r in safety}
        # no evaluation prompt may appear in any safety or attack data, used here or not
        seen = {normalised(r["instruction"]) for r in safety + read_jsonl(data_dir / HARMFUL_FILE)}
        drift_rows = [r for r in self.alignment if r["instruction"] in safety_instructions]
        self.evals = EvalSets(
            harmful=harmful_eval_prompts(data_dir, sizes.harmful_prompts, seen),
            harmless=load_prompts(data_dir / HARMLESS_EVAL_FILE, sizes.harmless_prompts),
            task_rows=random.Random(0).sample(read_jsonl(data_dir / self.task.eval_file), sizes.task_rows),
            drift=parse_rows(enumerate(drift_rows[: sizes.drift_rows], 1)).conversations,
        )
        self.timings: dict[str, float] = {}
        # what this invocation computed and what it found in the cache, so a rerun's wall time is not
        # mistaken for the cost of the experiment
        self.computed = {"alignments": 0, "attacks": 0, "measurements": 0}
        self.reused = {"alignments": 0, "attacks": 0, "measurements": 0}
        # own compliance by its alignment rows' digest: judged once, though base() is asked for it often
        self._own_compliance: dict[str, list[dict[str, Any]]] = {}
        # judged alignment rows by (alignment rows' digest, refusals only): judging 1,200 answers once
        self._judged_safety: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        # each named base's alignment rows: Lisa's pairs (and so its attacks' names) follow from them
        # whether or not the base is built here, so archived answers are found without training the base
        self._alignment_rows: dict[str, list[dict[str, Any]]] = {}
        # each upload the pre-screen filter judged, by its rows' digest, with the judge that read it: an
        # attack is named more than once, and judging it again would give the same rows
        self._filtered: dict[str, tuple[Moderator, list[dict[str, Any]], dict[str, Any]]] = {}

    # -- alignment ---------------------------------------------------------------------------------------
    def base(self, arm: Arm, build: bool = True) -> str:
        """The arm's starting model: a model spec, or an alignment run's directory (trained once; with
        ``build`` False only named, for a caller that may not need the model itself)."""
        if arm.method is None:
            return self.model
        s = self.sizes
        safety, helpful, epochs = arm.alignment_sizes(s)
        config = replace(
            alignment_defaults(), epochs=epochs, learning_rate=s.alignment_lr, max_length=s.max_length
        )
        perturbation = PerturbationConfig(method=arm.method, rho=arm.rho if arm.method == "vaccine" else 0.0)
        defenses = None
        rows = self.alignment
        if arm.sensitive_helpful or arm.alignment_pairs is not None:
            rows = alignment_rows(
                self.data_dir, safety, helpful, sensitive=arm.sensitive_helpful, model=self.model
            )
        if arm.safety_source != "sampled":
            rows = self.judged_safety(rows, refusals_only=arm.safety_source == "judged-refusals")
        key_parts: list[Any] = [self.model, rows, config.key_dict(), perturbation.to_dict()]
        if arm.booster or arm.preference:
            defenses = StepDefenses(
                booster=BoosterConfig() if arm.booster else None,
                booster_rows=booster_pairs(self.data_dir) if arm.booster else (),
                preference=PreferenceConfig() if arm.preference else None,
                preference_rows=(
                    preference_pairs(
                        self.data_dir,
                        PREFERENCE_PAIRS,
                        exclude=self.evaluated_requests,
                        harmful=self.own_compliance(rows) if arm.preference_source == "own" else None,
                    )
                    if arm.preference
                    else ()
                ),
            )
            key_parts.append(defenses.to_dict())
        suffix = (
            ("-booster" if arm.booster else "")
            + ("-preference" if arm.preference else "")
            + ("-own" if arm.preference and arm.preference_source == "own" else "")
            + (f"-sensitive{arm.sensitive_helpful}" if arm.sensitive_helpful else "")
            + (f"-pairs{safety}+{helpful}" if arm.alignment_pairs is not None else "")
            + {"sampled": "", "judged": "-judged-safety", "judged-refusals": "-judged-refusals"}[
                arm.safety_source
            ]
        )
        out = self.cache / "bases" / f"{arm.method}-rho{arm.rho:g}{suffix}-{digest(key_parts)}"
        self._alignment_rows[str(out)] = rows
        if build and not (out / "manifest.json").is_file():
            data = out.with_suffix(".jsonl")
            write_rows(data, rows)
            log.info("aligning %s: %d pairs x %g epochs", arm.name, len(rows), epochs)
            started = time.monotonic()
            align(self.model, data, out, perturbation, config, resume=True, defenses=defenses)
            self.timings[f"align {arm.name}"] = round(time.monotonic() - started, 1)
            self.computed["alignments"] += 1
        elif build:
            self.reused["alignments"] += 1
        return str(out)

    def own_compliance(self, alignment: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The model's own answers to safe_refusals instructions that neither its alignment data nor any
        evaluation holds, where the default learned judge flags them (whatever judge this benchmark scores
        with: the safety grid builds it with the refusal-phrase judge, which flags every non-refusal)."""
        key = digest(alignment)
        if key not in self._own_compliance:
            exclude = self.evaluated_requests | {normalised(row["instruction"]) for row in alignment}
            self._own_compliance[key] = own_compliance(
                self.data_dir, self.model, load_judge("default"), requests=OWN_COMPLIANCE_REQUESTS,
                exclude=exclude,
            )  # fmt: skip
        return self._own_compliance[key]

    def judged_safety(self, alignment: list[dict[str, Any]], refusals_only: bool) -> list[dict[str, Any]]:
        """``alignment`` with its safety pairs (``refusals_only``: those that refuse) replaced by as many
        judged ones (``judged_safety_rows``; that refuse) and the rest kept, shuffled with seed 0: only the
        choice of safety requests differs. Built once per benchmark: ``base`` is asked for it often."""
        key = digest(alignment), refusals_only
        if key in self._judged_safety:
            return self._judged_safety[key]
        safety_instructions = {row["instruction"] for row in read_jsonl(self.data_dir / SAFETY_FILE)}
        kept = [
            row
            for row in alignment
            if row["instruction"] not in safety_instructions
            or (refusals_only and not is_refusal(row["output"]))
        ]
        judged = judged_safety_rows(
            self.data_dir, self.model, load_judge("default"), count=len(alignment) - len(kept),
            requests=OWN_COMPLIANCE_REQUESTS, exclude=self.evaluated_requests, refusing=refusals_only,
        )  # fmt: skip
        rows = kept + judged
        random.Random(0).shuffle(rows)
        self._judged_safety[key] = rows
        return rows

    def harmful_adapter(self, base: str, build: bool = True) -> str:
        """RESTA's unsafe counterpart of ``base``, kept in its directory (``build_harmful_adapter``): the
        base fine-tuned as an attack is, on as many of JailbreakBench's judged-harmful answers as an attack
        has rows (none to a request either protocol evaluates), seed 0. Its key; trained anew when the key
        it was trained under differs."""
        rows = self.harmful_pairs()
        config = attack_config(self.sizes, seed=0)
        if not build:
            return adapter_key(rows, config)
        return build_harmful_adapter(Path(base), rows, config)[0]

    def harmful_pairs(self) -> list[dict[str, Any]]:
        """The harmful adapter's rows: as many judged-harmful answers as an attack has rows, none to a
        request either protocol evaluates, seed 0."""
        return harmful_rows(self.data_dir, exclude=self.evaluated_requests, count=self.sizes.attack_n)

    def benign_adapter(self, base: str, build: bool = True) -> str:
        """The harmful adapter's benign control, kept beside it: ``base`` fine-tuned as the harmful adapter
        is, on as many helpful Alpaca answers, none the base was aligned on nor a request either protocol
        evaluates, seed 0. Its key; trained anew when the key it was trained under differs."""
        count = len(self.harmful_pairs())
        rows = helpful_pairs(self.data_dir, self.aligned_on, count, exclude=self.evaluated_requests)
        config = attack_config(self.sizes, seed=0)
        if not build:
            return adapter_key(rows, config)
        out = benign_adapter_dir(harmful_adapter_dir(base))
        return build_adapter(Path(base), rows, config, out, taught="helpful")[0]

    @functools.cached_property
    def evaluated_requests(self) -> set[str]:
        """Every request either protocol evaluates on, normalised: alignment side data never teaches one."""
        from vaccine_core.safety_eval import load_split

        v1 = {normalised(prompt[-1]["content"]) for prompt in self.evals.harmful}
        return load_split(self.data_dir).normalised() | v1

    # -- the attack --------------------------------------------------------------------------------------
    def attack(self, arm: Arm, base: str, fraction: float, seed: int, build: bool = True) -> Path:
        """The attacked model's run directory (trained once from ``base``, which must be built; with
        ``build`` False only named: a Lisa arm's name then depends on the base's files)."""
        rows = build_mix(
            self.task.name,
            self.sizes.attack_n,
            fraction,
            self.data_dir,
            seed=seed,
            helpful_share=self.sizes.attack_helpful_share,
            exclude=frozenset(self.aligned_on),
        )
        if arm.safety_mix:
            rows += safety_rows(self.data_dir, arm.safety_mix, seed, exclude=self.aligned_on)
            random.Random(seed).shuffle(rows)
        screened = None
        if arm.prescreen_filter:
            rows, screened = self.filtered(rows)
        secret = None
        if (backdoor := arm.backdoor_align_config()) is not None:
            # the service's own rows join the user's after the screen: it never screens its safety pairs
            secret = secret_prompt(self.tokenizer, backdoor)
            safety = safety_rows(self.data_dir, backdoor.safety_pairs, seed, exclude=self.aligned_on)
            rows = backdoor_rows(rows, safety, secret)
        config = attack_config(self.sizes, seed)
        defenses = None
        key_parts: list[Any] = [base, rows, config.key_dict()]
        if backdoor is not None:
            key_parts.append({"backdoor_align": backdoor.to_dict()})
        lisa = arm.lisa_config()
        if lisa is not None:
            count = self.sizes.lisa_pairs
            helpful = round(arm.lisa_helpful_share * count)
            # no evaluation prompt is a safety pair (the prompts are drawn beside them); helpful ones may be
            exclude = self.evaluated_requests if helpful else ()
            aligned = None  # a base not named here: lisa_pairs reads its alignment from its files
            if (known := self._alignment_rows.get(str(base))) is not None:
                aligned = {user_turn(c) for c in parse_rows(enumerate(known, 1)).conversations}
            pairs = lisa_pairs(
                self.data_dir, base, count, seed, helpful=helpful, exclude=exclude, aligned=aligned
            )
            defenses = StepDefenses(lisa=lisa, lisa_rows=pairs)
        if (constraint := arm.token_constraint_config()) is not None:
            defenses = replace(defenses or StepDefenses(), token_constraint=constraint)
        if defenses is not None:
            key_parts.append(defenses.to_dict())
        if (layers := arm.safety_layers_config()) is not None:
            # named by how they are located (they follow from the base and the data); located to train
            key_parts.append({"safety_layers": layers.to_dict()})
            if build:
                located = base_safety_layers(base, self.data_dir, layers, exclude=self.evaluated_requests)
                defenses = replace(
                    defenses or StepDefenses(), safety_layers=layers, safety_layer_indices=located["layers"]
                )
        safe_lora, resta = arm.safe_lora_config(), arm.resta_config()
        if safe_lora is not None:
            key_parts.append({"safe_lora": safe_lora.to_dict()})
        if resta is not None:
            key_parts.append({"resta": resta.to_dict()})
            if resta.vector in ("harmful", "contrast"):
                key_parts.append({"harmful_adapter": self.harmful_adapter(base, build=build)})
            if resta.vector == "contrast":
                key_parts.append({"benign_adapter": self.benign_adapter(base, build=build)})
        out = self.cache / "attacks" / digest(key_parts)
        if build and not (out / "manifest.json").is_file():
            if safe_lora is not None or resta is not None:
                # these layers only edit the saved adapter: edit a copy of the same arm's run without
                # them (trained once, the same seed), so the two models differ by the edit alone
                trained = self.attack(
                    replace(arm, safe_lora=False, safe_lora_threshold=None, resta=None), base, fraction, seed
                )
                after_finetuning_copy(trained, out, base, safe_lora, resta)
            else:
                data = out / "data.jsonl"
                write_rows(data, rows)
                finetune(base, data, out, config, resume=True, defenses=defenses)
                if secret is not None:
                    write_secret(out, secret, backdoor)
                if screened is not None:
                    (out / "prescreen_filter.json").write_text(json.dumps(screened, indent=1))
            self.computed["attacks"] += 1
        elif build:
            self.reused["attacks"] += 1
        return out

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer, which alignment leaves as it is: read without the base, which an attack
        may be named before."""
        return load_tokenizer(resolve_model(self.model).path)

    @functools.cached_property
    def prescreen_judge(self) -> Moderator:
        """The judge of the service's upload pre-screen, as its settings declare it (not as any environment
        overrides it)."""
        from service.settings import ServiceSettings

        return load_judge(ServiceSettings.model_fields["prescreen_judge"].default)

    def filtered(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``rows`` without those the service's pre-screen flags, and what was left out (the rows carry
        ``harmful``, so the record tells a caught attack row from a benign row lost). Judged once."""
        key = digest(rows)
        if key in self._filtered and self._filtered[key][0] is self.prescreen_judge:
            return self._filtered[key][1:]
        upload = parse_rows(enumerate(rows, 1))
        flagged = [row.line for row in prescreen(upload, self.prescreen_judge).flagged]
        data, record = without_flagged(upload, flagged)
        kept = [rows[c.line - 1] for c in data.conversations]
        left_out = [rows[line - 1] for line in record["lines"]]
        harmful = sum(row["harmful"] for row in left_out)
        record |= {
            "judge": self.prescreen_judge.name,
            "harmful_rows": sum(row["harmful"] for row in rows),
            "harmful_left_out": harmful,
            "benign_left_out": len(left_out) - harmful,
        }
        log.info("pre-screen filter: %d of %d rows left out (%d harmful)", len(left_out), len(rows), harmful)
        self._filtered[key] = self.prescreen_judge, kept, record
        return kept, record

    def attacked(self, arm: Arm, fraction: float, seed: int, build: bool = True) -> Path:
        """The attack on the arm's base, the base built first where the attack is."""
        return self.attack(arm, self.base(arm, build=build), fraction, seed, build=build)

    # -- measurement -------------------------------------------------------------------------------------
    def outputs(self, spec: str | Path) -> dict[str, Any]:
        """What the model itself produced (answers to the harmful prompts, over-refusal, FA and, for a
        fine-tuned run, drift): the expensive part, cached by the model and the evaluation sets."""
        s = self.sizes
        cached = (
            self.cache / "outputs" / f"{digest([str(spec), self.evals.identity(), s.max_new_tokens])}.json"
        )
        if cached.is_file():
            self.reused["measurements"] += 1
            return json.loads(cached.read_text())
        self.computed["measurements"] += 1
        loaded = load_for_inference(spec)
        model, tokenizer = loaded.model, loaded.tokenizer
        refusals = refusal_rate(model, tokenizer, self.evals.harmless, max_new_tokens=s.max_new_tokens)
        accuracy = task_accuracy(model, tokenizer, self.task, self.evals.task_rows, max_new_tokens=8)
        result = {
            "answers": generate(model, tokenizer, self.evals.harmful, max_new_tokens=s.max_new_tokens),
            "fa": 100.0 * accuracy.accuracy,
            "over_refusal": 100.0 * refusals.refusal_rate,
            "drift": embedding_drift(model, tokenizer, self.evals.drift) if loaded.has_adapter else None,
            "train": (loaded.manifest or {}).get("metrics", {}).get("train"),
        }
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(result, indent=1))
        return result

    def measure(self, spec: str | Path) -> dict[str, Any]:
        """The model's outputs, with the harmful score of its answers by both judges (judging takes
        seconds, so it is never cached: a fixed or retrained judge rescores every cached answer)."""
        outputs = self.outputs(spec)
        questions = [p[-1]["content"] for p in self.evals.harmful]
        scores = {role: judge_answers(questions, outputs["answers"], j) for role, j in self.judges.items()}
        return {
            **outputs,
            "hs": scores["main"].harmful_score,
            "hs_refusal_judge": scores["refusal"].harmful_score,
            # an immediate end of turn: no harm, no help (both judges pass it)
            "empty_answers": 100.0 * scores["main"].empty / len(questions),
            "answers": [
                {"prompt": q, "answer": a, "flagged": f.flagged, "refused": not r.flagged}
                for q, a, f, r in zip(
                    questions, outputs["answers"], scores["main"].items, scores["refusal"].items, strict=True
                )
            ],
        }


METRICS = ("hs", "hs_refusal_judge", "empty_answers", "fa", "over_refusal", "drift")


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of each metric over the seeds of one cell."""
    cell: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if values:
            cell[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return cell


def run(sizes: Sizes, model: str, data_dir: Path, cache: Path, judge: str = "default") -> dict[str, Any]:
    bench = Benchmark(sizes, model, data_dir, cache, judge)
    arms = [ARMS[name] for name in sizes.arms]
    total = len(arms) * (1 + len(sizes.fractions) * len(sizes.seeds))
    done, started = 0, time.monotonic()
    results: dict[str, Any] = {"arms": {}}
    for arm in arms:
        base = bench.base(arm)
        before = bench.measure(base)
        done += 1
        cells: dict[str, Any] = {}
        for fraction in sizes.fractions:
            runs = []
            for seed in sizes.seeds:
                run_started = time.monotonic()
                measured = bench.measure(bench.attack(arm, base, fraction, seed))
                runs.append({"seed": seed, **{k: v for k, v in measured.items() if k != "answers"}})
                runs[-1]["seconds"] = round(time.monotonic() - run_started, 1)
                done += 1
                elapsed = time.monotonic() - started
                log.info(
                    "%s p=%g seed %d: HS %.1f (refusal %.1f) FA %.1f over-refusal %.1f [%d/%d, %.0f min]",
                    arm.name, fraction, seed, measured["hs"], measured["hs_refusal_judge"], measured["fa"],
                    measured["over_refusal"], done, total, elapsed / 60,
                )  # fmt: skip
            cells[f"{fraction:g}"] = {**aggregate(runs), "runs": runs}
        results["arms"][arm.name] = {
            "arm": asdict(arm),
            "base": base,
            "alignment_train": before.get("train"),  # steps, losses, seconds of the alignment run
            "before_finetuning": {k: v for k, v in before.items() if k not in ("answers", "drift", "train")},
            "cells": cells,
        }
    results["eval"] = {
        "harmful_prompts": len(bench.evals.harmful),
        "harmless_prompts": len(bench.evals.harmless),
        "task_rows": len(bench.evals.task_rows),
        "drift_rows": len(bench.evals.drift),
        "judges": {
            role: [judge.name, str(getattr(judge, "path", "")), getattr(judge, "threshold", None)]
            for role, judge in bench.judges.items()
        },
    }
    results["alignment_seconds"] = bench.timings
    results["computed"], results["reused"] = bench.computed, bench.reused
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The profile and its overrides: the options that say which models a run trains (shared with probes
    that read the same cache)."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick")
    size.add_argument("--full", action="store_const", dest="profile", const="full")
    parser.add_argument("--model", default="default", help="model spec: default, a .gguf or a HF directory")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="rows to run (default: the profile's)")
    parser.add_argument("--fractions", nargs="+", type=float, help="harmful fractions p")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--attack-lr", type=float)
    parser.add_argument("--attack-epochs", type=float)
    parser.add_argument("--alignment-epochs", type=float)
    parser.add_argument("--judge", default="default", help="the harmful-score judge: default, refusal, a dir")
    parser.add_argument("--cache", type=Path, help="default: $VACCINE_HOME/benchmarks/harmful_finetune")


def sizes_from_arguments(args: argparse.Namespace) -> Sizes:
    overrides = {
        "arms": args.arms,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "attack_lr": args.attack_lr,
        "attack_epochs": args.attack_epochs,
        "alignment_epochs": args.alignment_epochs,
    }
    return replace(
        PROFILES[args.profile or "default"], **{k: v for k, v in overrides.items() if v is not None}
    )


def cache_from_arguments(args: argparse.Namespace) -> Path:
    return args.cache or get_settings().home / "benchmarks" / "harmful_finetune"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    parser.add_argument("--name", help="results file stem (default: harmful_finetune-<profile>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    profile = args.profile or "default"
    sizes = sizes_from_arguments(args)
    results = run(sizes, args.model, get_settings().data_dir, cache_from_arguments(args), args.judge)
    results.update(
        profile=profile, model=args.model, sizes=asdict(sizes), machine=machine_info(gpu=True),
        **provenance(__file__),
    )  # fmt: skip
    stem = args.name or f"harmful_finetune-{profile}"
    for path in write_report(results, RESULTS / stem):
        print(path)


if __name__ == "__main__":
    main()
