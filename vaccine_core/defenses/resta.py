"""RESTA-style re-alignment (Bhardwaj et al. 2024, "Language Models are Homer Simpson!"): after
fine-tuning, add a safety vector to the fine-tuned weights again. No training, no data.

RESTA's safety vector is an aligned model minus a model whose safety was removed. Here the natural one is
the base's own alignment update (the aligned weights minus the unaligned ones: exactly the merged
alignment adapter, the same direction Safe LoRA projects onto), so the model handed back is

    unaligned + alignment update + user update + scale x alignment update.

RESTA's own vector is available too (``RestaConfig.vector = "harmful"``): the aligned base minus a copy of
it fine-tuned on harmful pairs, i.e. the negated update of an adapter trained on the aligned base, kept in
the base's directory (``HARMFUL_ADAPTER``) or where its owner keeps it. It points away from what harmful
fine-tuning learns rather than toward everything alignment taught, refusals of harmless requests included.
(RESTA also drops part of the user's update with DARE; that is not built here.)

With ``RestaConfig.outside_user`` only the vector's part outside the user's update is added: per layer,
(I - P_out) V (I - P_in), P_out and P_in the projectors onto the user's update's column and row spaces.
Its factors stay factors ((I - P_out) B and A (I - P_in)), so the result is still the LoRA adapter below;
the manifest records how much of the vector's norm was kept.

The result stays a PEFT LoRA adapter on the aligned base: every layer's A factors are stacked and its B
factors set side by side, ``[s_u B_u, scale s_a B_a] @ [A_u; A_a] = s_u B_u A_u + scale s_a B_a A_a``, with
rank r_u + r_a and a scaling of 1. A job that continues this model trains the user's own adapter, which is
kept beside it (``USER_ADAPTER``), so the alignment update is never added twice.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vaccine_core.defenses.config import RestaConfig
from vaccine_core.defenses.safe_lora import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    factors_of,
    lora_factors,
    update_bases,
)

USER_ADAPTER = "user_adapter"  # the user's adapter as trained, before the alignment update was added
HARMFUL_ADAPTER = "harmful_adapter"  # in a base's directory: the base fine-tuned on harmful pairs


def harmful_adapter_dir(base: Path, kept: Path | None = None) -> Path:
    """Where the base's harmful adapter is: ``kept``, where its owner keeps it, or the base's directory."""
    return Path(kept) if kept is not None else Path(base) / HARMFUL_ADAPTER


def safety_vector(base: Path, config: RestaConfig, harmful_adapter: Path | None = None) -> tuple[Path, float]:
    """The adapter whose update is ``config``'s safety vector, and the sign it is added with.
    ``harmful_adapter``: where the base's harmful adapter is kept, if not in the base's directory."""
    if config.vector == "alignment":
        return Path(base), 1.0
    harmful = harmful_adapter_dir(base, harmful_adapter)
    if not (harmful / ADAPTER_FILE).is_file():
        raise ValueError(f"RESTA's harmful vector needs {harmful}: the base fine-tuned on harmful pairs")
    return harmful, -1.0


def own_adapter(adapter_dir: Path) -> Path:
    """The adapter a user's job trained, before any re-alignment: what a continuing job starts from."""
    kept = Path(adapter_dir) / USER_ADAPTER
    return kept if (kept / ADAPTER_FILE).is_file() else Path(adapter_dir)


def outside_update(
    b: torch.Tensor, a: torch.Tensor, user_b: torch.Tensor, user_a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of (I - P_out) (b @ a) (I - P_in), where P_out and P_in project onto the column and row
    spaces of the user's update ``user_b @ user_a``: the update ``b @ a`` with nothing left along the
    user's directions."""
    columns, rows = update_bases(user_b, user_a)
    return b - columns @ (columns.T @ b), a - (a @ rows) @ rows.T


def add_alignment(
    user_adapter: Path, vector_adapter: Path, config: RestaConfig, sign: float = 1.0
) -> dict[str, Any]:
    """Rewrite the adapter at ``user_adapter`` in place as itself plus ``sign`` x ``config.scale`` times
    the update of ``vector_adapter``, the safety vector's adapter (``safety_vector``: the base's alignment
    adapter, or its harmful one negated); the adapter as trained is copied to
    ``USER_ADAPTER`` first. What was done, for the manifest."""
    user_dir = Path(user_adapter)
    if (user_dir / USER_ADAPTER).exists():
        raise ValueError(f"{user_dir} was re-aligned already: its own adapter is in {USER_ADAPTER}/")
    user_config = json.loads((user_dir / ADAPTER_CONFIG).read_text())
    alignment_config = json.loads((Path(vector_adapter) / ADAPTER_CONFIG).read_text())
    targets = user_config["target_modules"]
    for saved in (user_config, alignment_config):
        if saved.get("use_dora") or saved.get("rank_pattern") or saved.get("alpha_pattern"):
            raise ValueError("RESTA combines plain LoRA adapters (one rank and alpha, no DoRA)")
    if not isinstance(targets, list):
        raise ValueError("RESTA needs the user's adapter to name its target modules in a list")
    trained = load_file(str(user_dir / ADAPTER_FILE))
    dtype = next(iter(trained.values())).dtype  # the combined adapter keeps the job's weight dtype
    user, alignment = factors_of(trained, user_config), lora_factors(Path(vector_adapter))
    rank_user, rank_alignment = user_config["r"], alignment_config["r"]

    if config.outside_user:
        squared_before = sum((b @ a).square().sum() for b, a in alignment.values())
        alignment = {
            module: outside_update(b, a, *user[module]) if module in user else (b, a)
            for module, (b, a) in alignment.items()
        }
        squared_after = sum((b @ a).square().sum() for b, a in alignment.values())
        kept_share = float(squared_after / squared_before) ** 0.5 if squared_before > 0 else 1.0
    weights: dict[str, torch.Tensor] = {}
    for module in sorted(set(user) | set(alignment)):
        parts_a, parts_b = [], []
        for factors, rank, scale in (
            (user, rank_user, 1.0),
            (alignment, rank_alignment, sign * config.scale),
        ):
            if module in factors:
                b, a = factors[module]
                parts_a.append(a.float())
                parts_b.append(scale * b.float())
            else:  # a layer only one of the two adapters touches: that adapter's part of it is zero
                other_b, other_a = user.get(module) or alignment[module]
                out_features, in_features = other_b.shape[0], other_a.shape[1]
                parts_a.append(torch.zeros(rank, in_features))
                parts_b.append(torch.zeros(out_features, rank))
        weights[f"{module}.lora_A.weight"] = torch.cat(parts_a, dim=0).to(dtype).contiguous()
        weights[f"{module}.lora_B.weight"] = torch.cat(parts_b, dim=1).to(dtype).contiguous()

    kept = user_dir / USER_ADAPTER
    kept.mkdir()
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        shutil.copy2(user_dir / name, kept / name)
    rank = rank_user + rank_alignment
    names = {module.rsplit(".", 1)[-1] for module in alignment}
    combined = user_config | {
        "r": rank,
        "lora_alpha": rank,  # the factors carry their own scaling: the combined adapter's is 1
        "use_rslora": False,
        "target_modules": sorted(set(targets) | names),
    }
    save_file(weights, str(user_dir / ADAPTER_FILE), metadata={"format": "pt"})
    (user_dir / ADAPTER_CONFIG).write_text(json.dumps(combined, indent=2) + "\n")
    record = {**config.to_dict(), "layers": len(weights) // 2, "rank": rank}
    # the vector's Frobenius norm over every layer after the projection, as a share of its norm before
    return record | ({"kept_norm_share": round(kept_share, 4)} if config.outside_user else {})
