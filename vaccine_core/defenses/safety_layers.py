"""Safety layers kept out of the user's fine-tuning (after Li et al. 2024, "Safety Layers in Aligned Large
Language Models: The Key to LLM Security", SPPFT).

An aligned model tells a harmful request from a harmless one in a few contiguous middle layers: below them
the last prompt token's hidden states of the two kinds lie together; through them they move apart; above
them the separation stays. The paper fixes those layers' weights during fine-tuning, so the user's data can
teach the task everywhere else but cannot re-wire where the model decides to refuse.

Here the user's LoRA stays on every layer (the adapter keeps its shape for Safe LoRA, RESTA and continued
jobs); on the safety layers its weights are frozen, and since LoRA's B starts at zero they add nothing.

Located once per base, from its own hidden states at the prompt's last token, over requests the base was
not aligned on and no evaluation asks: after each layer, how far apart the two kinds lie relative to their
spread (Fisher's ratio along the difference of their means, ``separation``; the paper compares cosine
similarities within and across the kinds, which here the states' shared component drowns). The safety
layers are the decoder layers that build the separation: from the first whose output carries ``low`` of
the largest to the first whose output carries ``high`` of it. (The paper refines its upper bound by scaling
those layers' weights and reading over-refusal; that step is not built here.)
"""

import json
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.defenses.config import SafetyLayersConfig
from vaccine_core.defenses.data import aligned_requests, lisa_pairs, user_turn
from vaccine_core.formats import parse_rows
from vaccine_core.generation import prompt_token_ids


@torch.no_grad()
def last_token_states(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[str]
) -> torch.Tensor:
    """Each request's hidden state at its prompt's last token (the chat template's generation prompt), at
    every depth: [hidden states (embeddings first), requests, width]. One request at a time: no padding.
    Without dropout, whatever mode ``model`` is in (a worker's cached base may be in training mode)."""
    device, training = next(model.parameters()).device, model.training
    model.eval()
    states = []
    try:
        for ids in prompt_token_ids(tokenizer, [[{"role": "user", "content": r}] for r in requests]):
            out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
            states.append(torch.stack([h[0, -1].float().cpu() for h in out.hidden_states]))
    finally:
        model.train(training)
    return torch.stack(states, dim=1)


def separation(harmless: torch.Tensor, harmful: torch.Tensor) -> list[float]:
    """Per depth, how far apart the two kinds of request lie relative to their spread: Fisher's ratio along
    the difference of their means, |mu_harmful - mu_harmless|^2 / (var_harmful + var_harmless), each
    variance that of a kind's states projected on that direction ([depth, n, width] each); 0 where the
    means coincide. Cosines would not do: at the last prompt token every state shares one large component,
    and harmful requests are more alike than harmless ones at every depth."""
    difference = harmful.mean(dim=1) - harmless.mean(dim=1)
    distance = difference.norm(dim=-1)
    direction = difference / distance.clamp_min(torch.finfo(distance.dtype).tiny).unsqueeze(-1)

    def spread(states: torch.Tensor) -> torch.Tensor:
        projected = ((states - states.mean(dim=1, keepdim=True)) * direction.unsqueeze(1)).sum(dim=-1)
        return projected.var(dim=1)

    ratio = distance**2 / (spread(harmful) + spread(harmless)).clamp_min(torch.finfo(distance.dtype).tiny)
    return torch.where(distance > 0, ratio, torch.zeros_like(ratio)).tolist()


def separating_layers(separations: Sequence[float], low: float, high: float) -> list[int]:
    """The decoder layers (0-based) that build the separation: ``separations[d]`` follows layer d - 1
    (``separations[0]`` the embeddings), and the layers run from the first whose output reaches ``low`` of
    the largest separation to the first whose output reaches ``high`` of it."""
    top = max(separations)
    if top <= 0:
        raise ValueError("no depth separates harmful requests from harmless ones: no safety layers")
    first = next(d for d, value in enumerate(separations) if value >= low * top)
    last = next(d for d, value in enumerate(separations) if value >= high * top)
    return list(range(max(first, 1) - 1, last))


def locating_requests(
    data_dir: Path, base: str | Path, config: SafetyLayersConfig, exclude: Collection[str] = ()
) -> tuple[list[str], list[str]]:
    """Harmful and harmless requests the base was not aligned on, none (normalised) in ``exclude``: the user
    turns of safety pairs and of helpful Alpaca pairs, drawn as Lisa draws them."""
    n, aligned = config.requests, aligned_requests(base)  # the base's alignment data, read once
    harmful = lisa_pairs(data_dir, base, n, config.seed, exclude=exclude, aligned=aligned)
    harmless = lisa_pairs(data_dir, base, n, config.seed, helpful=n, exclude=exclude, aligned=aligned)
    return user_turns(harmful), user_turns(harmless)


def user_turns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [user_turn(c) for c in parse_rows(enumerate(rows, start=1)).conversations]


def locate_safety_layers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: SafetyLayersConfig,
) -> dict[str, Any]:
    """The safety layers of ``model`` and what located them (a manifest's record)."""
    separations = separation(
        last_token_states(model, tokenizer, harmless), last_token_states(model, tokenizer, harmful)
    )
    return {
        "layers": separating_layers(separations, config.low, config.high),
        "separation": [round(value, 4) for value in separations],
        **config.to_dict(),
    }


SAFETY_LAYERS_FILE = "safety_layers.json"  # in a base's directory: its located safety layers


def kept_safety_layers(kept: Path, config: SafetyLayersConfig) -> dict[str, Any] | None:
    """The record kept at ``kept`` when its layers were located with ``config``'s options, else None."""
    if not kept.is_file():
        return None
    record = json.loads(kept.read_text())
    return record if all(record.get(k) == v for k, v in config.to_dict().items()) else None


def base_safety_layers(
    base: str | Path,
    data_dir: Path,
    config: SafetyLayersConfig,
    exclude: Collection[str] = (),
    *,
    kept: Path | None = None,
    model: PreTrainedModel | None = None,
    on_locate: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The aligned base's safety layers, located once and kept at ``kept`` (by default beside its weights,
    in its directory), located again when asked with other options. ``model``: the base already loaded
    (a worker keeps it between jobs). The record says how long locating took; ``on_locate`` hears that this
    call locates them (two jobs on one base wait for one locating)."""
    from vaccine_core.build_lock import building
    from vaccine_core.inference import load_for_inference, resolve_base
    from vaccine_core.models import load_tokenizer

    kept = kept or Path(base) / SAFETY_LAYERS_FILE
    if (record := kept_safety_layers(kept, config)) is not None:
        return record
    with building(kept):
        if (record := kept_safety_layers(kept, config)) is not None:  # another job located them meanwhile
            return record
        if on_locate is not None:
            on_locate()
        started = time.perf_counter()
        harmful, harmless = locating_requests(data_dir, base, config, exclude)
        if model is None:
            loaded = load_for_inference(base)
            model, tokenizer = loaded.model, loaded.tokenizer
        else:
            tokenizer = load_tokenizer(resolve_base(base).model_path)
        record = locate_safety_layers(model, tokenizer, harmful, harmless, config)
        record["seconds"] = round(time.perf_counter() - started, 2)
        # written whole or not at all: a reader that does not take the lock may look at any moment
        staging = kept.with_name(f"{kept.name}.{os.getpid()}.partial")
        staging.write_text(json.dumps(record, indent=1) + "\n")
        staging.replace(kept)
    return record


def freeze_layers(model: torch.nn.Module, layers: Collection[int]) -> int:
    """Stop training the LoRA weights of the decoder ``layers`` of ``model``; how many tensors it froze."""
    wanted = {f".layers.{i}." for i in layers}
    frozen = 0
    for name, param in model.named_parameters():
        if "lora_" in name and param.requires_grad and any(part in name for part in wanted):
            param.requires_grad_(False)
            frozen += 1
    if layers and not frozen:
        raise ValueError(f"no LoRA weights found in layers {sorted(layers)}")
    if not any(p.requires_grad for name, p in model.named_parameters() if "lora_" in name):
        raise ValueError(f"the safety layers {sorted(layers)} are every layer the adapter trains: none left")
    return frozen
