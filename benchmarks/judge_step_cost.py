"""One training step of the default judge, timed per way of running it: where the judge's training time goes.

    .venv/bin/python benchmarks/judge_step_cost.py [--steps 8] [--name NAME]

Each variant runs in its own process on one synthetic full-length batch (the judge's 32 pairs of 128
tokens), with the judge's two lowest layers frozen (or ``--frozen-layers``) and its optimizer, under
bfloat16 autocast where the judge's training would choose it on this CPU (``learned.train_in_bfloat16``,
asked once). Each is then profiled over three steps: the dropout masks it draws a step
(``aten::bernoulli_``), their share of its CPU time, and the shares of its costliest operations say what
a cut could save. A step's arithmetic (its matrix products' FLOPs, counted) at the rate this machine
reaches on the judge's largest product (``matmul_gflops``) is its floor (``arithmetic_floor_seconds``):
training can only get nearer that by running differently, and below it only by computing less. Variants:

- ``sdpa``: the judge's training before 2026-12-05 (SDPA attention, attention-probability dropout 0.1);
- ``sdpa-compiled``: the same under ``torch.compile`` (inductor; its first step, the compilation, is
  reported apart);
- ``eager-attention``: eager attention, dropout kept (the same masks): the judge's training since;
- ``sdpa-no-attention-dropout``: SDPA without attention-probability dropout (its fused kernel);
- ``eager-bit-dropout``: the option ``--bit-dropout``: eager attention, every dropout mask drawn from 16
  random bits an element (``aten::random_``, counted as the masks here) instead of torch's Bernoulli draws;
- ``no-attention-dropout``: the option ``--attention-dropout 0`` (eager attention).

Writes benchmarks/results/judge_step_cost-NAME.json with the machine and the command.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.moderation.judge_config import JudgeTrainingConfig
from vaccine_core.moderation.learned import (
    attention_options,
    bundled_encoder,
    train_in_bfloat16,
    untrained_judge,
)

# each way of running a step: the encoder's attention options and whether it is compiled
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "sdpa": (attention_options(None, eager=False), False),  # the judge's training before 2026-12-05
    "sdpa-compiled": (attention_options(None, eager=False), True),
    "eager-attention": (attention_options(None, eager=True), False),  # shipped: the same masks
    "eager-bit-dropout": (attention_options(None, bit_masks=True), False),  # other masks, cheaper draws
    "sdpa-no-attention-dropout": ({"attention_probs_dropout_prob": 0.0}, False),
    "no-attention-dropout": (attention_options(0.0), False),  # --attention-dropout 0
}
BASELINE = "sdpa"
MASK_DRAWS = ("aten::bernoulli_", "aten::random_")  # torch's dropout; bit_dropout
PROFILED_STEPS = 3
TOP_OPERATIONS = 8


def judge_model(
    encoder: Path, attention: dict[str, Any], frozen_layers: int = JudgeTrainingConfig().frozen_layers
) -> BertForSequenceClassification:
    """The judge as ``train_judge`` starts it, in training mode."""
    return untrained_judge(encoder, attention, frozen_layers).train()


def full_batch(model: BertForSequenceClassification, rows: int, length: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(
        0, model.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(0)
    )
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def time_variant(
    variant: str, encoder: Path, bfloat16: bool, steps: int, rows: int, length: int, frozen_layers: int
) -> dict[str, Any]:
    """Seconds a step (after two warm-up steps), then the profile of three more."""
    options, compiled = VARIANTS[variant]
    torch.manual_seed(0)
    model = judge_model(encoder, options, frozen_layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    forward = torch.compile(model, options={"fallback_random": True}) if compiled else model
    batch = full_batch(model, rows, length)
    target = torch.zeros(rows)

    def step(run: torch.nn.Module = forward) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = run(**batch).logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float()[:, 0], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    result: dict[str, Any] = {
        "seconds_per_step": round((time.perf_counter() - started) / steps, 4),
        "first_step_seconds": round(first, 2),
    }
    with FlopCounterMode(display=False) as flops:
        step(model)  # counted uncompiled: the same arithmetic
    result["flop_per_step"] = flops.get_total_flops()
    with torch.profiler.profile() as profiler:
        for _ in range(PROFILED_STEPS):
            step()
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    masks = [e for e in events if e.key in MASK_DRAWS]
    result["dropout_masks_per_step"] = sum(e.count for e in masks) / PROFILED_STEPS
    result["dropout_masks_cpu_share"] = round(sum(e.self_cpu_time_total for e in masks) / total, 4)
    result["cpu_time_share"] = {
        e.key: round(e.self_cpu_time_total / total, 4) for e in events[:TOP_OPERATIONS]
    }
    return result


def matmul_gflops(bfloat16: bool, rows: int, length: int, hidden: int, repeats: int = 20) -> float:
    """The machine's rate at the judge's largest matrix product (a batch's tokens times the feed-forward
    weight), in the step's precision: about the best rate any of the step's products reaches."""
    tokens = torch.randn(rows * length, hidden)
    weight = torch.randn(hidden, 4 * hidden)
    dtype = torch.bfloat16 if bfloat16 else torch.float32
    tokens, weight = tokens.to(dtype), weight.to(dtype)
    for _ in range(3):
        tokens @ weight
    started = time.perf_counter()
    for _ in range(repeats):
        tokens @ weight
    seconds = (time.perf_counter() - started) / repeats
    return 2 * rows * length * hidden * 4 * hidden / seconds / 1e9


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps a variant (after two warm-ups)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--encoder", type=Path, default=None, help="a BERT directory (default: the bundled MiniLM)"
    )
    parser.add_argument("--rows", type=int, default=JudgeTrainingConfig().batch_size)
    parser.add_argument("--length", type=int, default=JudgeTrainingConfig().max_length)
    parser.add_argument(
        "--frozen-layers",
        type=int,
        default=JudgeTrainingConfig().frozen_layers,
        help="the encoder's lowest layers left untrained (the judge's option)",
    )
    parser.add_argument("--name", default="cpu-2cores")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--bfloat16", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    encoder = args.encoder or bundled_encoder()

    if args.worker:  # one variant, in this process
        figures = time_variant(
            args.worker, encoder, bool(args.bfloat16), args.steps, args.rows, args.length, args.frozen_layers
        )
        print(json.dumps(figures))
        return Path()

    probe = judge_model(encoder, VARIANTS[BASELINE][0])
    bfloat16 = JudgeTrainingConfig().bfloat16 and train_in_bfloat16(
        probe, full_batch(probe, args.rows, args.length)
    )
    variants = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--worker", variant, "--bfloat16", str(int(bfloat16))]
        command += ["--steps", str(args.steps), "--rows", str(args.rows), "--length", str(args.length)]
        command += ["--encoder", str(encoder), "--frozen-layers", str(args.frozen_layers)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        variants[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, variants[variant]["seconds_per_step"], "s a step", flush=True)
    baseline = variants.get(BASELINE, {}).get("seconds_per_step")
    rate = matmul_gflops(bfloat16, args.rows, args.length, probe.config.hidden_size)
    for figures in variants.values():
        # the step's arithmetic, all of it at its largest product's rate: what a way of running the step
        # that keeps its arithmetic can hope for (the rest of a step is dropout, softmax, copies)
        floor = figures["flop_per_step"] / (rate * 1e9)
        figures["arithmetic_floor_seconds"] = round(floor, 4)
        figures["step_over_floor"] = round(figures["seconds_per_step"] / floor, 2)
    result = {
        "benchmark": "judge_step_cost",
        **provenance("benchmarks/judge_step_cost.py"),
        "machine": machine_info(),
        "batch": {
            "rows": args.rows,
            "tokens": args.length,
            "bfloat16_autocast": bfloat16,
            "steps": args.steps,
            "frozen_layers": args.frozen_layers,
        },
        "matmul_gflops": round(rate, 2),
        "variants": variants,
        f"ratios_to_{BASELINE}": {
            name: round(v["seconds_per_step"] / baseline, 3) for name, v in variants.items() if baseline
        },
    }
    out = RESULTS / f"judge_step_cost-{args.name}.json"
    write_result(out, result)
    return out


if __name__ == "__main__":
    main()
