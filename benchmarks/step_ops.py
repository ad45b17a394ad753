"""Operations a training step dispatches: SFT, Vaccine (tau=1) and a Vaccine tau=100 reuse step.

Where a GPU waits on the host, as the H200 did at both shapes step_cost.py measures (the Llama2-7B step
took the time of the SmolLM2-135M one), a step's time follows how many operations the host dispatches,
not its arithmetic. This counts them on the CPU, with no GPU and in a second: the same layer count and
LoRA (r=8 on every projection) as a shape, at a tiny width, one step through the real training step
(``PerturbedStep``, gradient clipping, AdamW). Every operation that reaches PyTorch's dispatcher counts,
views included: an upper bound on kernel launches, and the same bound for every configuration.

    .venv/bin/python benchmarks/step_ops.py    # results/step_ops.json
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, provenance, write_result
from step_cost import CONFIGS, RANDOM_SHAPES, random_batches

TINY_WIDTH = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 512}


class OperationCount(TorchDispatchMode):
    """Counts every operation dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def step_operations(shape: str, batch_size: int = 5, tokens: int = 16) -> dict[str, int]:
    """Operations of one optimizer step of each configuration, on ``shape``'s layers at a tiny width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vaccine_core.config import LoraSettings, PerturbationConfig
    from vaccine_core.data import collate
    from vaccine_core.lora import add_lora
    from vaccine_core.perturbation import PerturbedStep

    config = {**RANDOM_SHAPES[shape], **TINY_WIDTH}
    grouped = RANDOM_SHAPES[shape]["num_key_value_heads"] < RANDOM_SHAPES[shape]["num_attention_heads"]
    config["num_key_value_heads"] = 2 if grouped else config["num_attention_heads"]  # GQA where it has it
    torch.manual_seed(0)
    model = add_lora(LlamaForCausalLM(LlamaConfig(**config)), LoraSettings(r=8, alpha=4, dropout=0.1))
    data = random_batches(config["vocab_size"], batch_size, tokens)
    batch = collate([data[i] for i in range(batch_size)], 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    counts = {}
    for name, (method, tau) in CONFIGS.items():
        perturbed_step = PerturbedStep(model, PerturbationConfig(method, rho=2.0, tau=tau))

        def step(perturbed_step: PerturbedStep = perturbed_step) -> None:
            """The training loop's step (vaccine_core.training.train) on one micro-batch."""
            optimizer.zero_grad(set_to_none=True)
            perturbed_step.backward(batch)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        step()  # the optimizer's state exists, and tau=100 has refreshed: the counted step reuses
        with OperationCount() as counted:
            step()
        counts[name] = counted.count
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama2-7b"], choices=RANDOM_SHAPES)
    parser.add_argument("--out", type=Path, default=RESULTS / "step_ops.json")
    args = parser.parse_args()
    shapes = {}
    for shape in args.shapes:
        counts = step_operations(shape)
        ratios = {name: counts[name] / counts["sft"] for name in counts}
        shapes[shape] = {"layers": RANDOM_SHAPES[shape]["num_hidden_layers"], "operations": counts,
                         "ratios_to_sft": ratios}  # fmt: skip
        for name, count in counts.items():
            print(f"{shape:13s} {name:15s} {count:6d} operations a step  {ratios[name]:.3f}x SFT")
    result = {"benchmark": "step_ops", **provenance("benchmarks/step_ops.py"), "torch": torch.__version__,
              "setup": {"width": TINY_WIDTH, "batch_size": 5, "tokens": 16, "lora": "r=8 alpha=4 all linear"},
              "shapes": shapes}  # fmt: skip
    write_result(args.out, result)


if __name__ == "__main__":
    main()
