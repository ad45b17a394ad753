"""Perturbation-aware training steps: Vaccine, its random-noise ablation, and plain SFT, in one interface.

Vaccine (Huang et al., NeurIPS 2024) perturbs each decoder layer's hidden embedding, the output of its
attention module before the residual add, in the direction that raises the alignment loss most:

    pass 1   g_l = dL/de_l for every layer l (gradients w.r.t. the hidden states only, no weight gradients)
             eps_l = rho * g_l / (||(g_1, ..., g_L)|| + 1e-7), one L2 norm over all layers and the whole batch
    pass 2   forward again with e_l + eps_l (eps a constant), backward; the optimizer steps on these gradients

Both passes see the same dropout masks: the random state is rewound before pass 2, so the perturbation is
computed for the very network it is applied to, and with rho = 0 a Vaccine step equals an SFT step exactly.
A batch run as runs of similar length (``backward_runs``, ``vaccine_core.unpadded``) takes pass 1 over
every run before the one global norm, and replays pass 1's masks in pass 2 instead of rewinding.

"Accelerated Vaccine" recomputes eps only every ``tau`` steps. Batches differ in shape between refreshes,
so what carries over is, per layer, the mean perturbation over the refresh batch's real (non-padding)
tokens: a direction in hidden space. A later batch gets that direction on each of its real tokens, scaled
so that the global norm over its real tokens is again rho. The refresh step itself uses the exact eps.
The direction is added to padded positions too, as one broadcast add a layer: a padded position is never
attended to and carries no label, so it reaches no loss, and no batch-sized tensor is built per layer.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from vaccine_core.config import PerturbationConfig
from vaccine_core.losses import answer_token_count, batch_loss
from vaccine_core.unpadded import MaskReplay

NORM_EPSILON = 1e-7  # as in the reference implementation
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")

Batch = dict[str, torch.Tensor]
Hook = Callable[[int, torch.Tensor], torch.Tensor | None]


# ------------------------------------------------------------------------------------ finding the layers


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer stack: the outermost ModuleList as long as the config's layer count."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = config.num_hidden_layers
    for _name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"found no list of {count} decoder layers in {type(model).__name__}")


def attention_of(layer: nn.Module) -> nn.Module:
    """A decoder layer's self-attention module, by the attribute names transformers uses."""
    for name in ATTENTION_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    for name, module in layer.named_children():
        if "attention" in type(module).__name__.lower() and "cross" not in name:
            return module
    raise ValueError(f"found no self-attention module in {type(layer).__name__}")


def find_attention_modules(model: nn.Module) -> list[nn.Module]:
    return [attention_of(layer) for layer in find_decoder_layers(model)]


# --------------------------------------------------------------------------------------------- hooking


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def attention_hooks(modules: list[nn.Module], hook: Hook) -> Iterator[None]:
    """Call ``hook(layer_index, hidden)`` on each attention output; a returned tensor replaces it.
    Every hook is removed on exit, whatever happens inside."""

    def make(index: int):
        def forward_hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            replacement = hook(index, _hidden(output))
            return None if replacement is None else _with_hidden(output, replacement)

        return forward_hook

    handles = [module.register_forward_hook(make(i)) for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _inputs_require_grad(model: nn.Module) -> Iterator[None]:
    """Make the input embeddings part of the graph, so every layer's hidden state has a gradient even where
    no trainable weight lies below it (a frozen first layer, adapters on MLPs only)."""
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------ the steps


def embedding_gradients(
    model: nn.Module, modules: list[nn.Module], batch: Batch, answer_tokens: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pass 1: the loss and dL/de_l for every attention output e_l, without any weight gradient
    (``answer_tokens``: ``batch`` is a run of a larger batch with that many answer tokens)."""
    captured: list[torch.Tensor] = []

    def capture(_index: int, hidden: torch.Tensor) -> None:
        captured.append(hidden)

    with _inputs_require_grad(model), attention_hooks(modules, capture):
        loss = batch_loss(model, batch, answer_tokens)
    grads = torch.autograd.grad(loss, captured, allow_unused=True)
    return loss.detach(), [
        torch.zeros_like(h) if g is None else g for h, g in zip(captured, grads, strict=True)
    ]


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One L2 norm over every element of every tensor, accumulated in float32."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


def vaccine_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """eps_l = rho * g_l / (global norm + 1e-7), computed in place on the gradients."""
    scale = rho / (global_norm(grads) + NORM_EPSILON)
    return [g.mul_(scale.to(g.dtype)) for g in grads]


class PerturbedStep:
    """Computes one micro-batch's gradients for the configured method; the training loop owns the rest."""

    def __init__(self, model: nn.Module, config: PerturbationConfig):
        self.model = model
        self.config = config
        self.modules = find_attention_modules(model) if config.method != "sft" else []
        self.calls = 0  # micro-batches seen, for the tau schedule
        self.directions: list[torch.Tensor] | None = None  # per-layer carried direction (tau > 1)

    def backward(
        self, batch: Batch, loss_scale: float = 1.0, answer_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Accumulate ``loss_scale`` times this batch's gradients into ``.grad``; return the loss, detached
        (a tensor on the model's device: reading it waits for the device, which the caller does once a step).
        ``answer_tokens``: the batch is a run of a larger one, with that many answer tokens (SFT only).

        The backward pass runs inside the hook context: under activation checkpointing it recomputes the
        forward, which must see the same perturbation."""
        if answer_tokens is not None and self.config.method != "sft":
            raise ValueError(f"{self.config.method} perturbs whole batches: see backward_runs")
        with self._perturbed(batch):
            loss = batch_loss(self.model, batch, answer_tokens)
            (loss * loss_scale).backward()
        self.calls += 1
        return loss.detach()

    def backward_runs(
        self, batch: Batch, runs: list[tuple[list[int], int]], masks: MaskReplay, loss_scale: float = 1.0
    ) -> torch.Tensor:
        """``backward(batch)`` with ``batch`` (right-padded) run as ``runs`` of its rows, each cut to its
        length, inside ``masks`` (the whole batch's dropout masks, replayed): each run's loss counts the
        whole batch's answer tokens, and Vaccine's pass 1 runs over every run before one global norm sets
        the runs' perturbations, so the gradients are the whole batch's. Pass 2 reuses pass 1's masks by
        replay, not by rewinding the random state. Not for the random ablation (its noise is drawn per
        forward) nor under activation checkpointing (a recomputed forward would draw masks anew)."""
        if self.config.method == "random" or self.recomputes_forward():
            raise ValueError("runs of a batch need replayable randomness and no recomputed forward")
        answer_tokens = answer_token_count(batch)
        parts = [(run, cut, {name: t[run, :cut] for name, t in batch.items()}) for run, cut in runs]
        perturbations: list[list[torch.Tensor] | None] = [None] * len(parts)
        if self.config.method == "vaccine":
            perturbations = list(self._run_perturbations(batch, parts, masks, answer_tokens))
        loss = torch.zeros((), device=batch["input_ids"].device)
        for index, (run, cut, part) in enumerate(parts):
            perturbation, perturbations[index] = perturbations[index], None  # released once added
            hooks = (
                contextlib.nullcontext()
                if perturbation is None
                else attention_hooks(self.modules, self._adder(perturbation))
            )
            with masks.run(run, cut), hooks:
                part_loss = batch_loss(self.model, part, answer_tokens)
                (part_loss * loss_scale).backward()
            loss += part_loss.detach()
        self.calls += 1
        return loss

    def _run_perturbations(
        self,
        batch: Batch,
        parts: list[tuple[list[int], int, Batch]],
        masks: MaskReplay,
        answer_tokens: torch.Tensor,
    ) -> list[list[torch.Tensor]]:
        """Each run's perturbation, per layer: pass 1 over every run, one global norm over them all (or the
        carried direction, between refreshes)."""
        if not (self.calls % self.config.tau == 0 or self.directions is None):
            carried = self._carried_perturbation(batch["attention_mask"])
            return [carried] * len(parts)
        grads = []
        for run, cut, part in parts:
            with masks.run(run, cut):
                grads.append(embedding_gradients(self.model, self.modules, part, answer_tokens)[1])
        scale = self.config.rho / (global_norm([g for run_grads in grads for g in run_grads]) + NORM_EPSILON)
        perturbations = [[g.mul_(scale.to(g.dtype)) for g in run_grads] for run_grads in grads]
        if self.config.tau > 1:
            self.directions = self._runs_mean_directions(
                perturbations, [part["attention_mask"] for _run, _cut, part in parts]
            )
        return perturbations

    def _perturbed(self, batch: Batch) -> contextlib.AbstractContextManager:
        if self.config.method == "sft":
            return contextlib.nullcontext()
        if self.config.method == "random":
            return attention_hooks(self.modules, self.add_noise)
        return attention_hooks(self.modules, self._vaccine_hook(batch))

    def add_noise(self, _index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Gaussian noise of variance rho, as in the reference's random-perturbation ablation."""
        return hidden + self.config.rho**0.5 * torch.randn_like(hidden)

    def _vaccine_hook(self, batch: Batch) -> Hook:
        device = batch["input_ids"].device
        if self.calls % self.config.tau == 0 or self.directions is None:
            rng = _rng_state(device)
            _, grads = embedding_gradients(self.model, self.modules, batch)
            perturbation = vaccine_perturbation(grads, self.config.rho)
            if self.config.tau > 1:
                self.directions = self._mean_directions(perturbation, batch["attention_mask"])
            _set_rng_state(rng, device)  # pass 2 sees pass 1's dropout masks
        else:
            perturbation = self._carried_perturbation(batch["attention_mask"])

        return self._adder(perturbation)

    def _adder(self, perturbation: list[torch.Tensor]) -> Hook:
        """The hook that adds ``perturbation[l]`` to layer l's attention output."""
        # Once added, a layer's perturbation is not needed again (the add's backward does not read it), so
        # it is released as the forward pass moves on and pass 2 peaks no higher than an SFT step. Under
        # activation checkpointing the forward is recomputed during backward and must find it again.
        release = not self.recomputes_forward()
        perturbation = list(perturbation)  # released here, not in the caller's list (a carried one is shared)

        def add_perturbation(index: int, hidden: torch.Tensor) -> torch.Tensor:
            eps = perturbation[index]
            if release:
                perturbation[index] = None  # type: ignore[call-overload]
            return hidden + eps.to(hidden.dtype)

        return add_perturbation

    def recomputes_forward(self) -> bool:
        """Whether the model recomputes its forward during backward (activation checkpointing)."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules())

    @staticmethod
    def _mean_directions(perturbation: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        return PerturbedStep._runs_mean_directions([perturbation], [mask])

    @staticmethod
    def _runs_mean_directions(
        perturbations: list[list[torch.Tensor]], masks: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per layer, the mean perturbation over the real tokens of every run (of one batch)."""
        reals = [mask.unsqueeze(-1).to(perturbations[0][0].dtype) for mask in masks]
        count = sum(real.sum() for real in reals).clamp_min(1)
        return [
            sum((run[layer] * real).sum(dim=(0, 1)) for run, real in zip(perturbations, reals, strict=True))
            / count
            for layer in range(len(perturbations[0]))
        ]

    def _carried_perturbation(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the carried direction scaled for this batch: one hidden-size vector each, added to
        every position (see the module's docstring for why padded positions may receive it)."""
        assert self.directions is not None
        # Each real token gets d_l, so the global norm is sqrt(tokens * sum_l |d_l|^2); rescale that to rho.
        norm = global_norm(self.directions) * mask.sum().to(torch.float32).sqrt()
        scale = self.config.rho / (norm + NORM_EPSILON)
        return [d * scale.to(d.dtype) for d in self.directions]

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "directions": self.directions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]
        self.directions = state["directions"]
