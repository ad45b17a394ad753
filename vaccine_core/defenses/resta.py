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

``RestaConfig.vector = "contrast"`` gives the harmful adapter a control, as task arithmetic does: the base
fine-tuned alike on helpful answers (``BENIGN_ADAPTER``, kept beside the harmful adapter), subtracted
from it before it is negated, so that what any such fine-tuning teaches (answer style and length, drift
every task shares) cancels and what the harmful pairs alone teach is left. A trial of this project's; the
manifest records how long the vector is against the harmful update and how the two updates align.

With ``RestaConfig.outside_user`` only the vector's part outside the user's update is added: per layer,
(I - P_out) V (I - P_in), P_out and P_in the projectors onto the user's update's column and row spaces.
Its factors stay factors ((I - P_out) B and A (I - P_in)), so the result is still the LoRA adapter below;
the manifest records how much of the vector's norm was kept.

The result stays a PEFT LoRA adapter on the aligned base: every layer's A factors are stacked and its B
factors set side by side, ``[s_u B_u, scale s_a B_a] @ [A_u; A_a] = s_u B_u A_u + scale s_a B_a A_a``, with
rank r_u + r_a and a scaling of 1 (a vector of two adapters is stacked the same way first). A job that
continues this model trains the user's own adapter, which is kept beside it (``USER_ADAPTER``), so the
alignment update is never added twice.
"""

import json
import shutil
from collections.abc import Sequence
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
BENIGN_ADAPTER = "benign_adapter"  # beside it: the base fine-tuned alike on helpful pairs (its control)


def harmful_adapter_dir(base: Path, kept: Path | None = None) -> Path:
    """Where the base's harmful adapter is: ``kept``, where its owner keeps it, or the base's directory."""
    return Path(kept) if kept is not None else Path(base) / HARMFUL_ADAPTER


def benign_adapter_dir(harmful_adapter: Path) -> Path:
    """Where the benign control of the harmful adapter at ``harmful_adapter`` is kept: beside it."""
    return Path(harmful_adapter).with_name(BENIGN_ADAPTER)


def safety_vector(
    base: Path, config: RestaConfig, harmful_adapter: Path | None = None
) -> list[tuple[Path, float]]:
    """The adapters whose updates, each times its sign, sum to ``config``'s safety vector.
    ``harmful_adapter``: where the base's harmful adapter is kept, if not in the base's directory (its
    benign control is kept beside it)."""
    if config.vector == "alignment":
        return [(Path(base), 1.0)]
    harmful = harmful_adapter_dir(base, harmful_adapter)
    if not (harmful / ADAPTER_FILE).is_file():
        raise ValueError(f"RESTA's harmful vector needs {harmful}: the base fine-tuned on harmful pairs")
    if config.vector == "harmful":
        return [(harmful, -1.0)]
    benign = benign_adapter_dir(harmful)
    if not (benign / ADAPTER_FILE).is_file():
        raise ValueError(f"RESTA's contrast vector needs {benign}: the base fine-tuned on helpful pairs")
    return [(harmful, -1.0), (benign, 1.0)]


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


Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # by module: (scaling x B, A), float32


def stacked(parts: Sequence[tuple[Factors, int, float]]) -> Factors:
    """Per layer, the one pair of factors of sum_i scale_i B_i A_i over ``parts`` (factors, rank, scale):
    the B's side by side and the A's stacked, rank sum_i r_i. A layer one part does not touch gets zeros
    in that part's place."""
    combined: Factors = {}
    for module in sorted(set().union(*(factors for factors, _, _ in parts))):
        b_any, a_any = next(factors[module] for factors, _, _ in parts if module in factors)
        out_features, in_features = b_any.shape[0], a_any.shape[1]
        parts_b, parts_a = [], []
        for factors, rank, scale in parts:
            if module in factors:
                b, a = factors[module]
                parts_b.append(scale * b.float())
                parts_a.append(a.float())
            else:
                parts_b.append(torch.zeros(out_features, rank))
                parts_a.append(torch.zeros(rank, in_features))
        combined[module] = torch.cat(parts_b, dim=1), torch.cat(parts_a, dim=0)
    return combined


def norm(factors: Factors) -> float:
    """The Frobenius norm over every layer of the update the factors make."""
    return float(sum((b @ a).square().sum() for b, a in factors.values())) ** 0.5


def contrast_record(harmful: Factors, benign: Factors) -> dict[str, float]:
    """How the contrast vector (benign minus harmful update) relates to the harmful update it was built
    from: its norm as a share of the harmful update's, and the cosine between the two updates over every
    layer. Each layer's update is formed once."""
    h = {module: b @ a for module, (b, a) in harmful.items()}
    g = {module: b @ a for module, (b, a) in benign.items()}
    zero = torch.zeros(())
    inner = sum(float((h[m] * g[m]).sum()) for m in h.keys() & g.keys())
    harmful_norm = sum(float(u.square().sum()) for u in h.values()) ** 0.5
    benign_norm = sum(float(u.square().sum()) for u in g.values()) ** 0.5
    vector_norm = (
        sum(float((g.get(m, zero) - h.get(m, zero)).square().sum()) for m in h.keys() | g.keys()) ** 0.5
    )
    return {
        "norm_share_of_harmful": round(vector_norm / harmful_norm, 4),
        "harmful_benign_cosine": round(inner / (harmful_norm * benign_norm), 4),
    }


def plain_lora_config(adapter_dir: Path) -> dict[str, Any]:
    """A saved adapter's config, which must be plain LoRA's (RESTA combines nothing else)."""
    saved = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    if saved.get("use_dora") or saved.get("rank_pattern") or saved.get("alpha_pattern"):
        raise ValueError("RESTA combines plain LoRA adapters (one rank and alpha, no DoRA)")
    return saved


def add_alignment(
    user_adapter: Path, vectors: Sequence[tuple[Path, float]], config: RestaConfig
) -> dict[str, Any]:
    """Rewrite the adapter at ``user_adapter`` in place as itself plus ``config.scale`` times the safety
    vector: the sum of the updates of ``vectors``' adapters, each times its sign (``safety_vector``: the
    base's alignment adapter, its harmful one negated, or that minus its benign control); the adapter as
    trained is copied to ``USER_ADAPTER`` first. What was done, for the manifest."""
    user_dir = Path(user_adapter)
    if (user_dir / USER_ADAPTER).exists():
        raise ValueError(f"{user_dir} was re-aligned already: its own adapter is in {USER_ADAPTER}/")
    user_config = plain_lora_config(user_dir)
    targets = user_config["target_modules"]
    if not isinstance(targets, list):
        raise ValueError("RESTA needs the user's adapter to name its target modules in a list")
    trained = load_file(str(user_dir / ADAPTER_FILE))
    dtype = next(iter(trained.values())).dtype  # the combined adapter keeps the job's weight dtype
    user, rank_user = factors_of(trained, user_config), user_config["r"]
    parts = [(lora_factors(path), plain_lora_config(path)["r"], sign) for path, sign in vectors]
    vector, rank_vector = stacked(parts), sum(rank for _, rank, _ in parts)
    record: dict[str, Any] = {}
    if config.vector == "contrast":  # parts: the harmful adapter's, then its benign control's
        record |= contrast_record(parts[0][0], parts[1][0])

    if config.outside_user:
        norm_before = norm(vector)
        vector = {
            module: outside_update(b, a, *user[module]) if module in user else (b, a)
            for module, (b, a) in vector.items()
        }
        # the vector's Frobenius norm over every layer after the projection, as a share of its norm before
        record["kept_norm_share"] = round(norm(vector) / norm_before, 4) if norm_before > 0 else 1.0
    combined = stacked([(user, rank_user, 1.0), (vector, rank_vector, config.scale)])
    weights: dict[str, torch.Tensor] = {}
    for module, (b, a) in combined.items():
        weights[f"{module}.lora_A.weight"] = a.to(dtype).contiguous()
        weights[f"{module}.lora_B.weight"] = b.to(dtype).contiguous()

    kept = user_dir / USER_ADAPTER
    kept.mkdir()
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        shutil.copy2(user_dir / name, kept / name)
    rank = rank_user + rank_vector
    names = {module.rsplit(".", 1)[-1] for module in vector}
    saved = user_config | {
        "r": rank,
        "lora_alpha": rank,  # the factors carry their own scaling: the combined adapter's is 1
        "use_rslora": False,
        "target_modules": sorted(set(targets) | names),
    }
    save_file(weights, str(user_dir / ADAPTER_FILE), metadata={"format": "pt"})
    (user_dir / ADAPTER_CONFIG).write_text(json.dumps(saved, indent=2) + "\n")
    return {**config.to_dict(), "layers": len(weights) // 2, "rank": rank} | record
