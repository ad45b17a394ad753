"""Booster (Huang et al. 2024, "Attenuating Harmful Perturbation"): an alignment-stage defense.

Alignment minimises f(w) + lambda * (h(w) - h(w - alpha * grad h(w) / ||grad h(w)||)), where f is the
alignment loss and h the loss on harmful pairs: the second term is how much one normalised step of
harmful fine-tuning lowers the harmful loss, and Booster makes that step do little. Its gradient, taken
as the reference takes it (the normalised step held fixed), is

    grad f(w) + lambda * (grad h(w) - grad h(w'))    with    w' = w - alpha * grad h(w) / ||grad h(w)||

so each step adds two passes over a harmful batch to the alignment pass(es): at w and at w'. The alignment
loss's own gradient may come from Vaccine's perturbed pass, so the two combine. Reference defaults:
lambda = 5, alpha = 0.1, harmful batches of 10.
"""

from typing import Any

import torch

from vaccine_core.defenses.base import Batch, BatchStream, trainable
from vaccine_core.defenses.config import BoosterConfig


def harmful_gradient(model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
    """The harmful loss and its gradient for every trainable weight (``.grad`` left untouched)."""
    params = trainable(model)
    loss = model(**batch).loss
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return float(loss.detach()), {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), grads, strict=True)
    }


class Booster:
    name = "booster"
    setup_seconds = 0.0  # nothing to prepare before the first step

    def __init__(self, model: torch.nn.Module, harmful: BatchStream, config: BoosterConfig):
        self.model, self.harmful, self.config = model, harmful, config
        self.last: dict[str, float] = {}  # harmful loss before and after the simulated step (for logs)

    def batch(self, step: int, batch: Batch) -> Batch:
        return batch

    def after_backward(self, step: int) -> None:
        params = trainable(self.model)
        batch = self.harmful.next(next(iter(params.values())).device)
        # pass 1: the harmful gradient at w
        before, at_w = harmful_gradient(self.model, batch)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in at_w.values())) + 1e-7
        # pass 2: at w' = w - alpha * g / ||g||; the weights are copied back exactly afterwards
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.sub_(self.config.alpha * at_w[name] / norm)
        after, at_moved = harmful_gradient(self.model, batch)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
        for name, param in params.items():
            term = self.config.lamb * (at_w[name] - at_moved[name])
            param.grad = term if param.grad is None else param.grad + term
        self.last = {"harmful_loss": before, "harmful_loss_after_step": after}

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.harmful.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.harmful.drawn = state["drawn"]
