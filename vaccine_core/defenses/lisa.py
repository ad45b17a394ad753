"""Lisa (Huang et al. 2024, "Lazy Safety Alignment"): a fine-tuning-stage defense.

Fine-tuning alternates between two states: a few steps on safety pairs (harmful request, safe answer),
then many steps on the user's data. Each state adds a proximal term rho/2 * ||w - w_other||^2 that pulls
the weights towards where the *other* state last left them, so that neither state drifts far from the
consensus (the paper's fix for the instability of plain alternation when alignment gets few steps). As in
the reference, the proximal term starts after the first tenth of the run.

The reference runs 100 alignment steps per 900 fine-tuning steps with rho = 1; our jobs run tens of steps,
so the default cycle is 1 safety step per 9 user steps, the same tenth.
"""

from typing import Any

import torch

from vaccine_core.defenses.base import Batch, BatchStream, trainable
from vaccine_core.defenses.config import LisaConfig

ALIGNMENT, FINETUNE = "alignment", "finetune"


class Lisa:
    name = "lisa"
    setup_seconds = 0.0  # nothing to prepare before the first step

    def __init__(self, model: torch.nn.Module, safety: BatchStream, config: LisaConfig, total_steps: int):
        self.model, self.safety, self.config, self.total_steps = model, safety, config, total_steps
        weights = {name: p.detach().clone() for name, p in trainable(model).items()}
        # where each state last left the weights: the other state's proximal anchor
        self.anchors = {ALIGNMENT: weights, FINETUNE: {k: v.clone() for k, v in weights.items()}}
        self.state = ALIGNMENT

    def state_of(self, step: int) -> str:
        """Each cycle opens with its alignment steps (as the reference starts in the alignment state)."""
        cycle = self.config.alignment_steps + self.config.finetune_steps
        return ALIGNMENT if (step - 1) % cycle < self.config.alignment_steps else FINETUNE

    def batch(self, step: int, batch: Batch) -> Batch:
        state = self.state_of(step)
        if state != self.state:  # leaving a state: remember where it left the weights
            self.anchors[self.state] = {name: p.detach().clone() for name, p in trainable(self.model).items()}
            self.state = state
        if state == ALIGNMENT:
            return self.safety.next(batch["input_ids"].device)  # the user's batch waits for the next cycle
        return batch

    def after_backward(self, step: int) -> None:
        """The proximal term's gradient, rho * (w - w_other), towards the other state's last weights."""
        if step <= self.config.proximal_after * self.total_steps or self.config.rho == 0:
            return
        anchor = self.anchors[FINETUNE if self.state == ALIGNMENT else ALIGNMENT]
        for name, param in trainable(self.model).items():
            pull = self.config.rho * (param.detach() - anchor[name])
            param.grad = pull if param.grad is None else param.grad + pull

    def state_dict(self) -> dict[str, Any]:
        return {"anchors": self.anchors, "state": self.state, "drawn": self.safety.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchors, self.state, self.safety.drawn = state["anchors"], state["state"], state["drawn"]
