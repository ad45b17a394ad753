"""Time per step and peak memory of SFT, Vaccine (tau=1) and Vaccine (tau=100) on one batch shape.

Each configuration runs in its own process (so peak memory is its own), through the real training loop,
on the default model with a LoRA adapter (r=8 on every projection) and batches of 8 alignment examples
truncated to exactly 160 tokens. The first step of each run is a warm-up and is not timed. With tau=100
the timed steps all reuse the carried perturbation; the figure that counts over a whole run is the
amortised cost, one refresh (a tau=1 step) per 100 steps: (t_vaccine + 99 * t_reuse) / 100.

    .venv/bin/python benchmarks/step_cost.py            # writes benchmarks/results/step_cost-<machine>.json
"""

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, provenance

CONFIGS = {"sft": ("sft", 1), "vaccine_tau1": ("vaccine", 1), "vaccine_tau100": ("vaccine", 100)}
RESULTS = Path(__file__).parent / "results"


def worker(name: str, steps: int, batch_size: int, tokens: int, device: str | None) -> dict:
    import torch

    from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig
    from vaccine_core.data import SupervisedDataset
    from vaccine_core.formats import load_dataset
    from vaccine_core.lora import add_lora
    from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device, resolve_model
    from vaccine_core.settings import get_settings
    from vaccine_core.training import train

    method, tau = CONFIGS[name]
    base = resolve_model("default")
    tokenizer = load_tokenizer(base.path)
    target = pick_device(device)
    model = add_lora(load_causal_lm(base.path, target), LoraSettings(r=8, alpha=4, dropout=0.1))
    conversations = load_dataset(
        get_settings().data_dir / "alignment/safe_refusals.jsonl", limit=2000
    ).conversations
    dataset = SupervisedDataset(conversations, tokenizer, max_length=tokens)
    dataset.examples = [e for e in dataset.examples if len(e.input_ids) == tokens][: batch_size * steps]
    if len(dataset) < batch_size * steps:
        raise SystemExit(f"only {len(dataset)} examples reach {tokens} tokens")
    config = TrainingConfig(
        batch_size=batch_size, max_steps=steps, max_length=tokens, warmup_ratio=0.0, seed=0
    )
    stamps: list[float] = []
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def on_progress(_progress) -> None:
        if target.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train(
        model,
        tokenizer,
        dataset,
        config,
        PerturbationConfig(method, rho=2.0, tau=tau),
        on_progress=on_progress,
    )
    timed = [b - a for a, b in itertools.pairwise(stamps)]  # step 1 is the warm-up
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if target.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "name": name,
        "seconds_per_step": sum(timed) / len(timed),
        "step_seconds": timed,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="optimizer steps per configuration, the first untimed"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--tokens", type=int, default=160, help="tokens per example (every example is this long)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default: results/step_cost-<machine>.json)"
    )
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size, args.tokens, args.device)))
        return

    runs = {}
    for name in CONFIGS:
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--tokens",
            str(args.tokens),
        ]
        if args.device:
            command += ["--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        output = done.stdout
        runs[name] = json.loads(output.strip().splitlines()[-1])
        print(
            f"{name:15s} {runs[name]['seconds_per_step']:8.3f} s/step  "
            f"peak {runs[name]['peak_mib']:9.1f} MiB",
            flush=True,
        )

    sft = runs["sft"]
    amortised = (
        runs["vaccine_tau1"]["seconds_per_step"] + 99 * runs["vaccine_tau100"]["seconds_per_step"]
    ) / 100
    ratios = {
        "vaccine_tau1_time": runs["vaccine_tau1"]["seconds_per_step"] / sft["seconds_per_step"],
        "vaccine_tau100_reuse_step_time": runs["vaccine_tau100"]["seconds_per_step"]
        / sft["seconds_per_step"],
        "vaccine_tau100_amortised_time": amortised / sft["seconds_per_step"],
        "vaccine_tau1_memory": runs["vaccine_tau1"]["peak_mib"] / sft["peak_mib"],
        "vaccine_tau100_memory": runs["vaccine_tau100"]["peak_mib"] / sft["peak_mib"],
    }
    for key, value in ratios.items():
        print(f"{key:32s} {value:6.3f}x SFT")
    import torch

    info = machine_info(
        gpu=(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    )
    result = {
        "benchmark": "step_cost",
        **provenance("benchmarks/step_cost.py"),
        "machine": info,
        "setup": {
            "model": "default (SmolLM2-135M-Instruct)",
            "batch_size": args.batch_size,
            "tokens": args.tokens,
            "steps": args.steps,
            "untimed_warmup_steps": 1,
            "lora": "r=8 alpha=4 all linear",
            "rho": 2.0,
        },
        "runs": runs,
        "ratios_to_sft": ratios,
        "memory_measure": "torch.cuda.max_memory_allocated"
        if "gpu" in info
        else "peak RSS of the worker process",
    }
    label = "gpu" if "gpu" in info else "cpu"
    out = args.out or RESULTS / f"step_cost-{label}-{info['cpu_count']}cores.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
