"""Safe LoRA (Hsu et al. 2024): a post-fine-tuning projection, no training.

For every layer the user's adapter changes, the alignment direction V is the aligned weight minus the
unaligned one: here exactly the alignment adapter's update (scaling x B_align @ A_align), since the user's
adapter sits on the merged aligned base. Where the user's update dW = scaling x B @ A points away from the
alignment subspace (the cosine between dW and its projection P dW is at most ``threshold``), the update is
replaced by its projection: B <- P @ B, so dW <- P @ dW. The paper builds P as V V^T / ||V||; with a
low-rank V that is only an approximate projector, so P here is the exact one onto V's column space, from
its singular vectors: P is idempotent and leaves an update inside the alignment subspace as it is.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vaccine_core.artifacts import ADAPTER_WEIGHTS
from vaccine_core.defenses.config import SafeLoraConfig

ADAPTER_FILE = ADAPTER_WEIGHTS
ADAPTER_CONFIG = "adapter_config.json"
# singular values below this share of the largest are numerical noise, not alignment directions
RANK_TOLERANCE = 1e-6


def lora_scaling(config: dict[str, Any]) -> float:
    """The factor PEFT multiplies a saved LoRA adapter's B @ A by (alpha / r, or alpha / sqrt(r) with
    rsLoRA)."""
    rank = config["r"]
    return config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)


def factors_of(
    weights: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (scaling x B, A) in float32, by module name, from a saved adapter's weights and
    config."""
    scaling = lora_scaling(config)
    return {
        key[: -len(".lora_A.weight")]: (scaling * weights[key.replace("lora_A", "lora_B")].float(), a.float())
        for key, a in weights.items()
        if key.endswith("lora_A.weight")
    }


def lora_factors(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (scaling x B, A) of a PEFT LoRA adapter directory, by module name."""
    weights = load_file(str(Path(adapter_dir) / ADAPTER_FILE))
    return factors_of(weights, json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()))


def lora_updates(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Every layer's update (scaling x B @ A) of a PEFT LoRA adapter directory, by module name."""
    return {module: b @ a for module, (b, a) in lora_factors(adapter_dir).items()}


def update_bases(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases of the column and row spaces of the update ``b @ a``, from its factors alone (QR
    of each, then the SVD of the small core): exact, and no [out, out] or [in, in] matrix is formed."""
    q_b, r_b = torch.linalg.qr(b.double())
    q_a, r_a = torch.linalg.qr(a.double().T)
    left, singular, right = torch.linalg.svd(r_b @ r_a.T)
    if singular.max() > 0:
        kept = singular > RANK_TOLERANCE * singular.max()
    else:  # an untrained update (B = 0) has no directions
        kept = torch.zeros_like(singular, dtype=torch.bool)
    return (q_b @ left[:, kept]).float(), (q_a @ right.T[:, kept]).float()


def projector(update: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector onto the column space of a full ``update`` ([out, out]; ``update_bases``
    gives the same space from an adapter's factors, without forming the update)."""
    left, singular, _ = torch.linalg.svd(update.double(), full_matrices=False)
    basis = left[:, singular > RANK_TOLERANCE * singular.max()] if singular.max() > 0 else left[:, :0]
    return (basis @ basis.T).float()


@dataclass
class LayerProjection:
    module: str
    cosine: float  # between the user's update and its projection onto the alignment subspace
    projected: bool


def project_adapter(
    user_adapter: Path, alignment_adapter: Path, config: SafeLoraConfig, out: Path | None = None
) -> list[LayerProjection]:
    """Project the user's adapter layer by layer (see the module's docstring) and write it to ``out``
    (default: in place). Layers the alignment adapter does not touch are left as they are."""
    user_dir = Path(user_adapter)
    weights = load_file(str(user_dir / ADAPTER_FILE))
    scaling = lora_scaling(json.loads((user_dir / ADAPTER_CONFIG).read_text()))
    report = []
    for module, factors in lora_factors(alignment_adapter).items():
        b_key, a_key = f"{module}.lora_B.weight", f"{module}.lora_A.weight"
        if b_key not in weights:
            continue
        b, a = weights[b_key].float(), weights[a_key].float()
        update = scaling * (b @ a)
        columns, _rows = update_bases(*factors)  # the alignment subspace, from its factors: P = C C^T
        projected_update = columns @ (columns.T @ update)
        norm = float(torch.linalg.matrix_norm(update))
        cosine = float(torch.linalg.matrix_norm(projected_update)) / norm if norm > 0 else 1.0
        chosen = cosine <= config.threshold
        if chosen:
            weights[b_key] = (columns @ (columns.T @ b)).to(weights[b_key].dtype)
        report.append(LayerProjection(module, cosine, chosen))
    target = Path(out) if out is not None else user_dir
    target.mkdir(parents=True, exist_ok=True)
    if target.resolve() != user_dir.resolve():
        (target / ADAPTER_CONFIG).write_text((user_dir / ADAPTER_CONFIG).read_text())
    save_file(weights, str(target / ADAPTER_FILE), metadata={"format": "pt"})
    return report
