"""The pre-screen's request-intent gate: a request classifier fine-tuned from the bundled MiniLM, harmful
requests against harmless ones, that a judge's flag on an upload row must also pass.

The judge reads a (request, answer) pair and was trained so the answer carries its decision; on plain
Alpaca uploads that makes it flag long, helpful answers to harmless requests (23 of 450 rows). An upload's
harmful row is a harmful request with its compliance, so the pre-screen flags a row only when the judge
flags it *and* its request reads as harmful. Measured through the pre-screen on its benchmark's two
uploads (500 rows, 50 BeaverTails harmful, every row unseen in training): benign rows flagged 23 -> 3 of 450
(Alpaca) and 2 -> 1 (SST-2), harmful rows found 46 -> 44 of 50 on both
(benchmarks/results/judge_selection.md).

Training data, none of it from the safety protocol's split or the pre-screen benchmark's uploads: harmful
requests are the alignment data's instructions, BeaverTails' and JailbreakBench's prompts; harmless ones
are Alpaca-style ``harmless_val`` prompts, the judge's Alpaca and task rows, and the borderline requests
that only sound harmful. Split by question hash as the judge's data; the gate's threshold is the highest
that keeps ``gate_recall`` of the validation part's harmful requests.
"""

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaccine_core.build_lock import building
from vaccine_core.mixing import read_jsonl
from vaccine_core.moderation.base import Moderator, Pair, Verdict
from vaccine_core.moderation.borderline import borderline_requests
from vaccine_core.moderation.dataset import (
    alpaca_question,
    load_labelled_pairs,
    prescreen_benchmark_uploads,
    question_part,
)
from vaccine_core.moderation.judge_config import options_key, training_progress
from vaccine_core.moderation.registry import INTENT_GATE_SUFFIX
from vaccine_core.settings import get_settings
from vaccine_core.text import normalised

if TYPE_CHECKING:  # the training loop's module imports torch: a look at the cache never loads it
    from vaccine_core.training import ProgressCallback

log = logging.getLogger(__name__)

INTENT_TYPE = "vaccine-request-intent"
INTENT_FILE = "intent.json"

# Options added after gates were first cached, each with the value that trains as gates did before it
# existed: at that value an option is left out of the key, so earlier gates keep theirs.
LATER_OPTIONS: dict[str, object] = {"bfloat16": False, "bit_dropout": False, "unpadded": True}


@dataclass
class IntentTrainingConfig:
    max_length: int = field(default=64, metadata={"help": "Tokens of a request read."})
    epochs: int = field(default=1, metadata={"help": "Passes over the training requests."})
    batch_size: int = field(default=32, metadata={"help": "Requests per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps warming the rate up."})
    gate_recall: float = field(
        default=0.99,
        metadata={"help": "Share of validation harmful requests the gate lets through (sets its threshold)."},
    )
    int8_scoring: bool = field(
        default=False,
        metadata={
            "help": "Score on a CPU with int8 dynamic quantisation, and set the gate so; off, as the judge's "
            "option of the same name: int8 makes a request's score depend on the requests batched with it."
        },
    )
    bfloat16: bool = field(
        default=True,
        metadata={
            "help": "Train under bfloat16 autocast where this CPU runs it faster (the judge's rule: "
            "learned.train_in_bfloat16); scoring stays in float32. With bit_dropout, on 2 Intel AMX cores "
            "the gate trains in 62-70 s against 101-113 s, finding as many harmful upload rows and flagging "
            "as few benign ones over eight seeds each (benchmarks/results/judge_selection.md, 2026-12-07)."
        },
    )
    bit_dropout: bool = field(
        default=True,
        metadata={"help": "Draw the dropout masks from 16 random bits an element (moderation.bit_dropout)."},
    )
    unpadded: bool = field(
        default=True,
        metadata={
            "help": "Run each batch as runs of requests of similar length (the judge's option of the same "
            "name): the same gradient and, with bit_dropout, the same masks on fewer padded tokens; in "
            "float32 only, as the judge's. Gates trained before it keep their key."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the head's initialisation and the data order."})

    def key(self) -> str:
        return options_key(asdict(self), LATER_OPTIONS)


def labelled_requests(data_dir: Path) -> list[tuple[str, bool]]:
    """(request, harmful), de-duplicated, none of them a protocol prompt or a benchmark upload's request."""
    from vaccine_core.safety_eval import load_split

    unseen = load_split(data_dir).normalised()
    unseen |= {
        normalised(alpaca_question(r))
        for rows in prescreen_benchmark_uploads(data_dir).values()
        for r in rows
    }
    harmful = [alpaca_question(r) for r in read_jsonl(data_dir / "alignment/safe_refusals.jsonl")]
    harmful += [alpaca_question(r) for r in read_jsonl(data_dir / "attack/beavertails_unsafe.jsonl")]
    harmful += [r["prompt"] for r in read_jsonl(data_dir / "moderation/jailbreakbench_judged.jsonl")]
    harmless = [r["prompt"] for r in read_jsonl(data_dir / "eval/harmless_val.jsonl")]
    harmless += [
        p.question
        for p in load_labelled_pairs(data_dir)
        if p.source == "benign" or p.source.startswith("task_")
    ]
    harmless += [r.request for r in borderline_requests(data_dir)]
    labelled, seen = [], set(unseen)
    for harm, texts in ((True, harmful), (False, harmless)):
        for text in texts:
            if (key := normalised(text)) not in seen:
                seen.add(key)
                labelled.append((text, harm))
    return labelled


def gate_threshold(scores: Sequence[float], harmful: Sequence[bool], recall: float) -> float:
    """The highest threshold at which ``recall`` of the harmful requests still score at or above it."""
    ranked = sorted(s for s, h in zip(scores, harmful, strict=True) if h)
    if not ranked:
        raise ValueError("no harmful request to set the gate on")
    return ranked[min(len(ranked) - 1, int((1 - recall) * len(ranked)))]


class IntentModel:
    """A trained request classifier: the probability that a request asks for harm."""

    def __init__(self, path: Path, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from vaccine_core.models import pick_device
        from vaccine_core.moderation.learned import as_calibrated

        self.path = path
        options = json.loads((path / INTENT_FILE).read_text())
        self.threshold: float = options["threshold"]
        self.max_length: int = options["max_length"]
        self.device = torch.device(device or pick_device())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        self.model, self.quantized = as_calibrated(model, options, self.device)  # as its gate was set

    def encode(self, requests: Sequence[str]) -> Any:
        return self.tokenizer(
            list(requests), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)

    def score(self, requests: Sequence[str], batch_size: int = 64) -> list[float]:
        import torch

        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(requests), batch_size):
                logits = self.model(**self.encode(requests[start : start + batch_size])).logits
                scores += torch.sigmoid(logits[:, 0].float()).tolist()
        return scores


def train_intent(
    train: Sequence[tuple[str, bool]],
    validation: Sequence[tuple[str, bool]],
    target: Path,
    config: IntentTrainingConfig,
    encoder: Path | None = None,
    on_progress: "ProgressCallback | None" = None,
) -> Path:
    """Fine-tune ``encoder`` (the bundled MiniLM) on ``train``'s (request, harmful) pairs, the classes
    weighted to balance; set the gate on ``validation``; save it all to ``target``. ``on_progress`` hears
    of every step."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    from vaccine_core.moderation import bit_dropout
    from vaccine_core.moderation.learned import (
        attention_options,
        bundled_encoder,
        train_in_bfloat16,
    )
    from vaccine_core.training import Progress
    from vaccine_core.unpadded import length_runs, replayed

    started = time.perf_counter()
    encoder = encoder or bundled_encoder()
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(  # one sigmoid logit: "asks for harm"
        encoder,
        num_labels=1,
        problem_type="multi_label_classification",
        ignore_mismatched_sizes=True,
        **attention_options(None, bit_masks=config.bit_dropout),
    )
    if config.bit_dropout:
        bit_dropout.use_bit_dropout(model)  # the hidden states' masks too

    def encode(requests: list[str]) -> Any:
        return tokenizer(
            requests, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt"
        )

    labels = torch.tensor([h for _, h in train], dtype=torch.float32)
    # summed, each step divided by its batch's size: a batch run as runs by length adds up to its mean
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=(labels == 0).sum() / (labels == 1).sum().clamp(min=1), reduction="sum"
    )
    tokenized = tokenizer([text for text, _ in train], truncation=True, max_length=config.max_length)
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    steps = config.epochs * -(-len(train) // config.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    schedule = get_scheduler("linear", optimiser, int(config.warmup_ratio * steps), steps)
    order_rng = random.Random(config.seed)
    model.train()
    probe = encode([text for text, _ in train[: config.batch_size]])
    bfloat16 = config.bfloat16 and train_in_bfloat16(model, probe, kind="intent")
    # runs by length keep the recipe only where the masks can be replayed (bit masks), in float32 (the
    # judge's rule: under bfloat16 they train another model)
    unpadded = config.unpadded and config.bit_dropout and not bfloat16
    step, tokens, loop_started = 0, 0, time.perf_counter()
    for _ in range(config.epochs):
        order = list(range(len(train)))
        order_rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            # runs of the batch's requests by length, each padded to its own longest, or the batch whole
            runs = length_runs([lengths[i] for i in batch]) if unpadded else [list(range(len(batch)))]
            step_loss = 0.0
            with replayed(len(batch), max(lengths[i] for i in batch)) as masks:
                for run in runs:
                    picked = [batch[r] for r in run]
                    encoded = encode([train[i][0] for i in picked])
                    with (
                        masks.run(run, encoded["input_ids"].shape[1]),
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16),
                    ):
                        logits = model(**encoded).logits
                    loss = loss_fn(logits[:, 0].float(), labels[picked]) / len(batch)
                    loss.backward()
                    step_loss += loss.item()
            learning_rate = schedule.get_last_lr()[0]
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step, tokens = step + 1, tokens + sum(lengths[i] for i in batch)
            if on_progress is not None:
                elapsed = time.perf_counter() - loop_started
                epoch, eta = config.epochs * step / steps, elapsed / step * (steps - step)
                on_progress(Progress(step, steps, epoch, step_loss, learning_rate, tokens / elapsed, eta))
    staged = target.with_name(f"{target.name}.partial-{os.getpid()}")  # two workers may train at once
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    options = {
        "type": INTENT_TYPE,
        "threshold": 0.5,
        "max_length": config.max_length,
        "training": asdict(config),
        "bfloat16_autocast": bfloat16,
        "length_runs": unpadded,  # whether batches ran as runs of similar length (as the judge records it)
        "train_requests": len(train),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (staged / INTENT_FILE).write_text(json.dumps(options, indent=2) + "\n")
    # the gate is set with the model as it runs
    scores = IntentModel(staged).score([t for t, _ in validation])
    harmful = [h for _, h in validation]
    threshold = gate_threshold(scores, harmful, config.gate_recall)
    passed = sum(s >= threshold for s, h in zip(scores, harmful, strict=True) if not h)
    options |= {
        "threshold": threshold,
        "validation": {
            "harmful": sum(harmful),
            "harmless": len(harmful) - sum(harmful),
            "harmless_passing_the_gate": passed,
        },
    }
    (staged / INTENT_FILE).write_text(json.dumps(options, indent=2) + "\n")
    try:
        staged.rename(target)
    except OSError:  # another process finished first: its model stands
        if not (target / INTENT_FILE).is_file():
            raise
        shutil.rmtree(staged)
    return target


def intent_dir(labelled: Sequence[tuple[str, bool]], config: IntentTrainingConfig) -> Path:
    digest = hashlib.sha256(json.dumps(list(labelled)).encode()).hexdigest()[:10]
    return get_settings().home / "judges" / f"intent-{digest}-{config.key()}"


def ensure_intent_model(
    data_dir: Path | None = None,
    config: IntentTrainingConfig | None = None,
    on_progress: "ProgressCallback | None" = None,
) -> Path:
    """The cached intent model, trained once (minutes on a CPU) when missing, its progress shown as a bar
    (or handed to ``on_progress``) and kept beside it for a probe in another process."""
    from vaccine_core.moderation.learned import progress_beside
    from vaccine_core.progress import ProgressBar

    data_dir = data_dir or get_settings().data_dir
    config = config or IntentTrainingConfig()
    labelled = labelled_requests(data_dir)
    target = intent_dir(labelled, config)
    if (target / INTENT_FILE).is_file():
        return target
    with building(target):
        if (target / INTENT_FILE).is_file():  # another worker trained it while this one waited
            return target
        log.info("training the pre-screen's intent gate once (cached at %s)", target)
        parts = {
            part: [(t, h) for t, h in labelled if question_part(t) == part]
            for part in ("train", "validation")
        }
        with progress_beside(target, on_progress or ProgressBar("training the intent gate")) as report:
            return train_intent(parts["train"], parts["validation"], target, config, on_progress=report)


def intent_model_ready(config: IntentTrainingConfig | None = None) -> bool:
    """Whether an intent model of these options is cached (a look, for a readiness probe)."""
    key = (config or IntentTrainingConfig()).key()
    return any((get_settings().home / "judges").glob(f"intent-*-{key}/{INTENT_FILE}"))


def intent_training_progress(config: IntentTrainingConfig | None = None) -> dict | None:
    """How far a worker is in training the intent gate of these options, or None when none is training."""
    return training_progress(f"intent-*-{(config or IntentTrainingConfig()).key()}")


class IntentGatedJudge:
    """A judge whose flags stand only where the request also reads as harmful (scores: the judge's)."""

    def __init__(self, judge: Moderator, intent: IntentModel):
        self.judge, self.intent = judge, intent
        self.name = f"{judge.name}{INTENT_GATE_SUFFIX}"

    def score(self, pairs: Sequence[Pair]) -> list[Verdict]:
        verdicts = self.judge.score(pairs)
        flagged = [i for i, v in enumerate(verdicts) if v.flagged]
        intents = self.intent.score([pairs[i][0] for i in flagged])  # only what the judge flagged
        for i, intent in zip(flagged, intents, strict=True):
            if intent < self.intent.threshold:
                verdicts[i] = Verdict(False, verdicts[i].score)
        return verdicts
