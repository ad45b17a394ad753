"""Does an attack's LoRA update lie in the layers' safety features more than a task's does?

SaLoRA (Li et al., ICLR 2025) trains a LoRA update as (I - U U^T) B A, U being each layer's "safety
features": the top singular directions of the layer's outputs on harmful prompts. That cuts harm without
cutting the task only if an attack's update puts more of itself into those directions than a task's update
does. This reads that on one aligned base, nothing built:

* two adapters trained with the service's fine-tuning defaults (seed 0): harmful rows only (BeaverTails,
  p = 1) and task rows only (SST-2, p = 0), as ``build_mix`` draws them;
* per LoRA-targeted layer, U_r from its outputs (every prompt token) on harmful requests of the safety
  data, none a protocol prompt; the share of each adapter's update energy in U_r,
  sum ||U_r^T dW||^2 / sum ||dW||^2 over the layers, beside a random subspace's r / width.

    .venv/bin/python benchmarks/update_safety_overlap.py --base ALIGNED_BASE_DIR [--name NAME]

Writes benchmarks/results/update_safety_overlap-NAME.json.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.config import finetune_defaults
from vaccine_core.defenses.safe_lora import lora_updates
from vaccine_core.finetune import finetune
from vaccine_core.generation import prompt_token_ids
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import SAFETY_FILE, build_mix, read_jsonl, write_rows
from vaccine_core.moderation.dataset import alpaca_question
from vaccine_core.safety_eval import load_split
from vaccine_core.settings import get_settings
from vaccine_core.text import normalised

RANKS = (4, 16, 64)
UPLOAD_ROWS = 100
HARMFUL_REQUESTS = 64
PEFT_PREFIX = "base_model.model."  # an adapter's module names, before the plain model's


def harmful_requests(data_dir: Path, count: int, seed: int) -> list[str]:
    """``count`` requests of the safety data, none a protocol prompt, drawn with ``seed``."""
    unseen = load_split(data_dir).normalised()
    requests = [alpaca_question(r) for r in read_jsonl(data_dir / SAFETY_FILE)]
    return random.Random(seed).sample([r for r in requests if normalised(r) not in unseen], count)


@torch.no_grad()
def output_gram(model: torch.nn.Module, tokenizer: Any, requests: list[str], modules: list[str]) -> dict:
    """Per module, the Gram matrix of its outputs over every prompt token of ``requests`` (out x out)."""
    grams: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())

    def hook(name: str):
        def record(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            flat = output.detach().float().reshape(-1, output.shape[-1])
            grams[name] = grams.get(name, 0) + flat.T @ flat

        return record

    handles = [named[name].register_forward_hook(hook(name)) for name in modules]
    try:
        model.eval()
        for ids in prompt_token_ids(tokenizer, [[{"role": "user", "content": r}] for r in requests]):
            model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return grams


def top_directions(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading eigenvectors of a Gram matrix (the outputs' top singular directions), the
    leading one last."""
    _values, vectors = torch.linalg.eigh(gram.double())
    return vectors[:, -rank:].float()


def energy_shares(updates: dict[str, torch.Tensor], bases: dict[str, torch.Tensor]) -> dict[str, float]:
    """The share of the updates' squared norm inside the bases' column spaces, and a random subspace's."""
    inside = sum(float((bases[m].T @ d).pow(2).sum()) for m, d in updates.items())
    total = sum(float(d.pow(2).sum()) for d in updates.values())
    chance = sum(float(d.pow(2).sum()) * bases[m].shape[1] / d.shape[0] for m, d in updates.items())
    return {"share": inside / total, "random_subspace_share": chance / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="an aligned base's directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="shipped-base")
    args = parser.parse_args()
    data_dir, started = get_settings().data_dir, time.perf_counter()
    config = finetune_defaults()

    updates: dict[str, dict[str, torch.Tensor]] = {}
    train_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for upload, fraction in (("harmful", 1.0), ("sst2", 0.0)):
            rows = build_mix("sst2", UPLOAD_ROWS, fraction, data_dir, seed=args.seed)
            data, out = Path(scratch) / f"{upload}.jsonl", Path(scratch) / upload
            write_rows(data, rows)
            began = time.perf_counter()
            finetune(args.base, data, out, config)
            train_seconds[upload] = round(time.perf_counter() - began, 1)
            updates[upload] = {m.removeprefix(PEFT_PREFIX): d for m, d in lora_updates(out).items()}

    loaded = load_for_inference(args.base)
    modules = sorted(updates["harmful"])
    grams = output_gram(
        loaded.model, loaded.tokenizer, harmful_requests(data_dir, HARMFUL_REQUESTS, args.seed), modules
    )
    leading = {m: top_directions(grams[m], max(RANKS)) for m in modules}  # one eigendecomposition each
    by_rank = {}
    for rank in RANKS:
        bases = {m: directions[:, -rank:] for m, directions in leading.items()}
        shares = {upload: energy_shares(u, bases) for upload, u in updates.items()}
        shares["harmful_over_sst2"] = shares["harmful"]["share"] / shares["sst2"]["share"]
        by_rank[str(rank)] = shares
    result = {
        "benchmark": "update_safety_overlap",
        **provenance(" ".join(sys.argv)),
        "machine": machine_info(),
        "base": str(args.base),
        "layers": len(modules),
        "upload_rows": UPLOAD_ROWS,
        "harmful_requests": HARMFUL_REQUESTS,
        "finetune_config": config.to_dict(),
        "train_seconds": train_seconds,
        "by_rank": by_rank,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(RESULTS / f"update_safety_overlap-{args.name}.json", result)
    for rank, shares in by_rank.items():
        print(
            f"r={rank}: harmful {shares['harmful']['share']:.4f}, sst2 {shares['sst2']['share']:.4f} "
            f"(random {shares['sst2']['random_subspace_share']:.4f}); ratio {shares['harmful_over_sst2']:.2f}"
        )


if __name__ == "__main__":
    main()
