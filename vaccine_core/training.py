"""The training loop shared by alignment and fine-tuning, readable top to bottom.

It trains whatever parameters of ``model`` require gradients (a LoRA adapter here), on the batches of a
SupervisedDataset, with the gradients of a PerturbedStep (SFT, Vaccine or random noise). It reports progress
through a callback, stops cooperatively between steps when asked, and writes checkpoints from which a run
resumes to exactly the weights an uninterrupted run would reach: trainable weights, optimizer, scheduler,
the perturbation's carried state and every random generator are saved, and the batch order is a pure
function of (seed, epoch).
"""

import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, get_scheduler

from vaccine_core.artifacts import CHECKPOINTS_DIR
from vaccine_core.config import PerturbationConfig, TrainingConfig
from vaccine_core.data import SupervisedDataset, collate
from vaccine_core.losses import Batch
from vaccine_core.perturbation import PerturbedStep
from vaccine_core.unpadded import length_runs, replayed, use_replaying_dropout

if TYPE_CHECKING:  # the defenses package builds on this module's neighbours
    from vaccine_core.defenses.base import StepDefense

STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    validation_loss: float | None = None  # at the steps where the run measures it


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    cancelled: bool
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    last_checkpoint: Path | None = None
    defense_seconds: dict[str, float] = field(default_factory=dict)  # in each defense's set-up and hooks
    validation_losses: dict[int, float] = field(default_factory=dict)  # by step

    def add_defense_time(self, name: str, since: float) -> None:
        self.defense_seconds[name] = self.defense_seconds.get(name, 0.0) + time.perf_counter() - since

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]


def plan_steps(examples: int, config: TrainingConfig) -> tuple[int, int]:
    """(micro-batches per epoch, total optimizer steps)."""
    micro_per_epoch = math.ceil(examples / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
    total = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    return micro_per_epoch, max(total, 1)


def validation_steps(total_steps: int, count: int) -> set[int]:
    """``count`` steps spread evenly over the run, its last step among them."""
    return {max(1, round(total_steps * k / count)) for k in range(1, count + 1)} | {total_steps}


def micro_batches(
    dataset: SupervisedDataset, config: TrainingConfig, pad_token_id: int, start: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Endless stream of (epoch, batch) from micro-batch ``start`` on; each epoch's order is seeded."""
    per_epoch = math.ceil(len(dataset) / config.batch_size)
    index = start
    while True:
        epoch, position = divmod(index, per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch))
        chunk = order[position * config.batch_size : (position + 1) * config.batch_size].tolist()
        yield epoch, collate([dataset[i] for i in chunk], pad_token_id)
        index += 1


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINTS_DIR
    candidates = sorted(root.glob("step-*/" + STATE_FILE)) if root.is_dir() else []
    return candidates[-1].parent if candidates else None


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    perturbed_step: PerturbedStep,
    losses: list[float],
    defenses: Sequence["StepDefense"] = (),
) -> Path:
    """Write checkpoints/step-NNNNNN atomically: the adapter in PEFT's format plus the full trainer state."""
    root = output_dir / CHECKPOINTS_DIR
    target = root / f"step-{step:06d}"
    staging = root / f".step-{step:06d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(staging)
    state = {
        "step": step,
        "trainable": {name: p.detach().cpu().clone() for name, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "perturbation": perturbed_step.state_dict(),
        "defenses": {d.name: d.state_dict() for d in defenses},
        "losses": list(losses),
        "rng": _rng_states(),
    }
    torch.save(state, staging / STATE_FILE)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: SupervisedDataset,
    config: TrainingConfig,
    perturbation: PerturbationConfig | None = None,
    *,
    output_dir: Path | None = None,
    resume_from: Path | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    defenses: Sequence["StepDefense"] = (),
    validate: Callable[[], float] | None = None,
    validation_count: int = 0,
) -> TrainResult:
    """Train ``model``'s trainable weights; ``defenses`` choose each step's batch and add their gradients
    after its backward pass (vaccine_core.defenses); ``validate`` (a held-out loss, measured without
    dropout or randomness, so a resumed run is unchanged) runs ``validation_count`` times, evenly spaced."""
    if len(dataset) == 0:
        raise ValueError("no training examples left after tokenization")
    if (config.checkpoint_every or resume_from) and output_dir is None:
        raise ValueError("checkpoints need an output_dir")
    device = next(model.parameters()).device
    perturbation = perturbation or PerturbationConfig(method="sft")
    perturbed_step = PerturbedStep(model, perturbation)
    params = _trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameters")

    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    _micro_per_epoch, total_steps = plan_steps(len(dataset), config)
    scheduler = get_scheduler(
        config.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )

    torch.manual_seed(config.seed)
    start_step, losses = 0, []
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                params[name].copy_(tensor.to(device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        perturbed_step.load_state_dict(state["perturbation"])
        for defense in defenses:
            defense.load_state_dict(state["defenses"][defense.name])
        _restore_rng(state["rng"])
        start_step, losses = state["step"], list(state["losses"])

    result = TrainResult(steps=start_step, total_steps=total_steps, cancelled=False, losses=losses)
    measure_at = validation_steps(total_steps, validation_count) if validate and validation_count else set()
    accumulation = config.gradient_accumulation_steps
    batches = micro_batches(dataset, config, tokenizer.pad_token_id, start=start_step * accumulation)
    # SFT and Vaccine steps on the CPU run each batch as runs of similar length. The random ablation and the
    # step defenses need it whole, and so does a recomputed forward; on a GPU padding costs less than more
    # passes, and dropout draws its masks otherwise.
    by_runs = (
        config.unpadded
        and perturbation.method in ("sft", "vaccine")
        and not defenses
        and device.type == "cpu"
        and not perturbed_step.recomputes_forward()
    )
    if by_runs:
        use_replaying_dropout(model)
    model.train()
    started = time.perf_counter()

    for step in range(start_step + 1, total_steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break

        optimizer.zero_grad(set_to_none=True)
        # the step's loss and tokens stay on the device until the step is done: one wait for the device a
        # step, not two a micro-batch
        loss_sum = torch.zeros((), device=device)
        token_sum = torch.zeros((), device=device, dtype=torch.long)
        for _ in range(accumulation):
            epoch, batch = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            for defense in defenses:
                hook_started = time.perf_counter()
                batch = defense.batch(step, batch)
                result.add_defense_time(defense.name, hook_started)
            if by_runs:
                loss = backward_by_runs(perturbed_step, batch, loss_scale=1.0 / accumulation)
            else:
                loss = perturbed_step.backward(batch, loss_scale=1.0 / accumulation)
            loss_sum += loss.float() / accumulation
            token_sum += batch["attention_mask"].sum()
        for defense in defenses:
            hook_started = time.perf_counter()
            defense.after_backward(step)
            result.add_defense_time(defense.name, hook_started)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()

        step_loss, result.tokens = float(loss_sum), result.tokens + int(token_sum)
        result.steps = step
        result.losses.append(step_loss)
        validation_loss = None
        if step in measure_at:
            validation_loss = result.validation_losses[step] = validate()
        elapsed = time.perf_counter() - started
        done_here = step - start_step
        if on_progress is not None:
            on_progress(
                Progress(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch + 1,
                    loss=step_loss,
                    learning_rate=learning_rate,
                    tokens_per_second=result.tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=elapsed / done_here * (total_steps - step),
                    validation_loss=validation_loss,
                )
            )
        if output_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
            result.last_checkpoint = save_checkpoint(
                output_dir, step, model, optimizer, scheduler, perturbed_step, result.losses, defenses
            )

    if result.cancelled and output_dir is not None and result.steps > start_step:
        # Keep the work done so far: a cancelled or pre-empted job resumes from here.
        last = latest_checkpoint(output_dir)
        if last is None or not last.name.endswith(f"{result.steps:06d}"):
            result.last_checkpoint = save_checkpoint(
                output_dir, result.steps, model, optimizer, scheduler, perturbed_step, result.losses, defenses
            )
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


def backward_by_runs(perturbed_step: PerturbedStep, batch: Batch, loss_scale: float) -> torch.Tensor:
    """``perturbed_step.backward`` on ``batch`` (right-padded) as runs of rows of similar length, each cut to
    its own longest, with the whole batch's answer-token count and dropout masks: the same gradients;
    return the batch's loss."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    runs = [(run, max(lengths[i] for i in run)) for run in length_runs(lengths)]
    with replayed(len(lengths), batch["input_ids"].shape[1]) as masks:
        return perturbed_step.backward_runs(batch, runs, masks, loss_scale)
