"""Time per step and peak memory of SFT, Vaccine (tau=1) and Vaccine (tau=100) on one batch shape.

Each configuration runs in its own process (so peak memory is its own), through the real training loop,
with a LoRA adapter (r=8 on every projection). The first step of each run is a warm-up and is not timed.
With tau=100 the timed steps all reuse the carried perturbation; the figure that counts over a whole run
is the amortised cost, one refresh (a tau=1 step) per 100 steps: (t_vaccine + 99 * t_reuse) / 100.

A step's time is the median timed step (the mean, ``mean_seconds_per_step``, was the figure of results
written before ``--rounds`` existed). Where steps are short and the host's jitter large (a GPU waiting on
eager kernel launches moved every ratio by 10 % between two runs), ``--rounds N`` runs each configuration
N times in alternating order and pools the steps; ``ratios_to_sft_by_round`` shows the spread.

Shapes (``--shape``):

* ``default``: the default model's weights, batches of 8 alignment examples truncated to exactly 160
  tokens (the CPU result in benchmarks/results/step_cost-cpu-2cores.json);
* ``llama2-7b``: the paper's model shape (Llama2-7B's configuration) randomly initialised in bf16 on the
  GPU (timing needs no trained weights), the paper's batch of 5, sequences of ``--tokens`` random tokens
  (256 unless given: VACCINE.md does not state the paper's length; its pairs are short);
* ``smollm2-135m``: the default model's shape with random weights, as ``default`` measures it (for a GPU
  machine, where the model's file cannot travel);
* ``tiny``: a two-layer model of the same family, to check the script anywhere in seconds.

The paper's figures (A100, Llama2-7B): Vaccine 0.73 s a step against SFT's 0.37 s (1.97x), memory
+0.3 %, tau=100 1.02x.

    .venv/bin/python benchmarks/step_cost.py                      # the default model, here
    python benchmarks/step_cost.py --shape llama2-7b --device cuda  # on a GPU (benchmarks/gpu/check.sh)
"""

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

CONFIGS = {"sft": ("sft", 1), "vaccine_tau1": ("vaccine", 1), "vaccine_tau100": ("vaccine", 100)}
# LlamaConfig fields of the shapes built at random (Llama2-7B's published configuration)
RANDOM_SHAPES = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    "smollm2-135m": {  # the default model's shape (its weights are the GGUF, too big to carry to a GPU)
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 512,
        "max_position_embeddings": 1024,
    },
}
SHAPE_DEFAULTS = {"default": (8, 160), "smollm2-135m": (8, 160), "llama2-7b": (5, 256), "tiny": (5, 64)}
PAPER = {"device": "A100", "shape": "llama2-7b", "sft_seconds": 0.37, "vaccine_tau1_seconds": 0.73,
         "vaccine_tau1": 1.97, "vaccine_tau100": 1.02, "memory_vaccine_tau1": 1.003}  # fmt: skip


def random_model(shape: str, device):
    """A randomly initialised model of ``shape``, built directly on ``device`` in its training dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from vaccine_core.models import pick_dtype

    previous = torch.get_default_dtype()
    torch.set_default_dtype(pick_dtype(device))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**RANDOM_SHAPES[shape]))
    finally:
        torch.set_default_dtype(previous)
    return model


def random_batches(vocab: int, count: int, tokens: int):
    """``count`` examples of ``tokens`` random ids, every token an answer token (labels = inputs)."""
    import torch

    from vaccine_core.data import SupervisedDataset, TokenizedExample

    dataset = SupervisedDataset([], tokenizer=None, max_length=tokens)
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        ids = torch.randint(1, vocab, (tokens,), generator=generator).tolist()
        dataset.examples.append(TokenizedExample(input_ids=ids, labels=list(ids)))
    return dataset


def worker(name: str, shape: str, steps: int, batch_size: int, tokens: int, device: str | None) -> dict:
    import types

    import torch

    from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig
    from vaccine_core.data import SupervisedDataset
    from vaccine_core.formats import load_dataset
    from vaccine_core.lora import add_lora
    from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device, resolve_model
    from vaccine_core.settings import get_settings
    from vaccine_core.training import train

    method, tau = CONFIGS[name]
    target = pick_device(device)
    lora = LoraSettings(r=8, alpha=4, dropout=0.1)
    if shape == "default":
        base = resolve_model("default")
        tokenizer = load_tokenizer(base.path)
        model = add_lora(load_causal_lm(base.path, target), lora)
        conversations = load_dataset(
            get_settings().data_dir / "alignment/safe_refusals.jsonl", limit=2000
        ).conversations
        dataset = SupervisedDataset(conversations, tokenizer, max_length=tokens)
        dataset.examples = [e for e in dataset.examples if len(e.input_ids) == tokens][: batch_size * steps]
        if len(dataset) < batch_size * steps:
            raise SystemExit(f"only {len(dataset)} examples reach {tokens} tokens")
    else:
        model = add_lora(random_model(shape, target), lora)
        tokenizer = types.SimpleNamespace(pad_token_id=0)  # every example is full length: nothing pads
        dataset = random_batches(RANDOM_SHAPES[shape]["vocab_size"], batch_size * steps, tokens)
    config = TrainingConfig(
        batch_size=batch_size, max_steps=steps, max_length=tokens, warmup_ratio=0.0, seed=0
    )
    stamps: list[float] = []
    # this process's CPU time, all threads: on a GPU the host spin-waits at each synchronisation, so there
    # it reads about the wall time whatever bounds the step (the 2026-12-04 H200 run: equal to 3 digits)
    cpu_stamps: list[float] = []
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def on_progress(_progress) -> None:
        if target.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    train(
        model,
        tokenizer,
        dataset,
        config,
        PerturbationConfig(method, rho=2.0, tau=tau),
        on_progress=on_progress,
    )
    timed = [b - a for a, b in itertools.pairwise(stamps)]  # step 1 is the warm-up
    cpu = [b - a for a, b in itertools.pairwise(cpu_stamps)]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if target.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "name": name,
        "dtype": str(next(model.parameters()).dtype),
        "seconds_per_step": statistics.median(timed),
        "mean_seconds_per_step": statistics.fmean(timed),
        "step_seconds": timed,
        "cpu_seconds_per_step": sum(cpu) / len(cpu),
        "peak_mib": peak,
    }


def run_worker(name: str, args: argparse.Namespace) -> dict:
    """One configuration in a process of its own (its peak memory is its own)."""
    command = [sys.executable, __file__, "--worker", name, "--shape", args.shape, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--tokens", str(args.tokens)]  # fmt: skip
    if args.device:
        command += ["--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pooled(rounds: list[dict]) -> dict:
    """A configuration's rounds as one: the median step over all of them (a host hiccup moves a mean),
    the highest peak."""
    steps = [t for r in rounds for t in r["step_seconds"]]
    return {
        "name": rounds[0]["name"],
        "dtype": rounds[0]["dtype"],
        "seconds_per_step": statistics.median(steps),
        "mean_seconds_per_step": statistics.fmean(steps),
        "round_seconds_per_step": [r["seconds_per_step"] for r in rounds],
        "step_seconds": steps,
        "cpu_seconds_per_step": statistics.fmean(r["cpu_seconds_per_step"] for r in rounds),
        "peak_mib": max(r["peak_mib"] for r in rounds),
    }


def ratios_to_sft(runs: dict[str, dict]) -> dict[str, float]:
    """Each Vaccine configuration against SFT; tau=100 amortised as one refresh (a tau=1 step) per 100."""
    sft, tau1, tau100 = runs["sft"], runs["vaccine_tau1"], runs["vaccine_tau100"]
    amortised = (tau1["seconds_per_step"] + 99 * tau100["seconds_per_step"]) / 100
    return {
        "vaccine_tau1_time": tau1["seconds_per_step"] / sft["seconds_per_step"],
        "vaccine_tau100_reuse_step_time": tau100["seconds_per_step"] / sft["seconds_per_step"],
        "vaccine_tau100_amortised_time": amortised / sft["seconds_per_step"],
        "vaccine_tau1_memory": tau1["peak_mib"] / sft["peak_mib"],
        "vaccine_tau100_memory": tau100["peak_mib"] / sft["peak_mib"],
    }


def describe(run: dict) -> str:
    return (
        f"{run['name']:15s} {run['seconds_per_step']:8.3f} s/step  "
        f"({run['cpu_seconds_per_step']:.3f} s of CPU)  peak {run['peak_mib']:9.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="optimizer steps per configuration, the first untimed"
    )
    parser.add_argument("--shape", choices=sorted(SHAPE_DEFAULTS), default="default")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the shape's (8; 5, the paper's)"
    )
    parser.add_argument(
        "--tokens", type=int, default=None, help="tokens per example (every example is this long)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times each configuration runs, in alternating order; steps are pooled (the median counts)",
    )
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default: results/step_cost-<machine>.json)"
    )
    args = parser.parse_args()
    batch_size, tokens = SHAPE_DEFAULTS[args.shape]
    args.batch_size, args.tokens = args.batch_size or batch_size, args.tokens or tokens

    if args.worker:
        measured = worker(args.worker, args.shape, args.steps, args.batch_size, args.tokens, args.device)
        print(json.dumps(measured))
        return

    measured_rounds: list[dict[str, dict]] = []
    for round_index in range(args.rounds):
        # odd rounds run the configurations in reverse, so a drift of the machine favours none of them
        order = list(CONFIGS) if round_index % 2 == 0 else list(reversed(CONFIGS))
        measured_rounds.append({})
        for name in order:
            measured_rounds[-1][name] = run_worker(name, args)
            print(f"round {round_index + 1}: {describe(measured_rounds[-1][name])}", flush=True)
    runs = {name: pooled([r[name] for r in measured_rounds]) for name in CONFIGS}
    for name in CONFIGS:
        print(f"pooled:  {describe(runs[name])}", flush=True)

    ratios = ratios_to_sft(runs)
    for key, value in ratios.items():
        print(f"{key:32s} {value:6.3f}x SFT")
    import torch

    info = machine_info(
        gpu=(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    )
    on_gpu = "gpu" in info
    result = {
        "benchmark": "step_cost",
        **provenance("benchmarks/step_cost.py"),
        "machine": info,
        "shape": args.shape,
        "device": info.get("gpu", f"cpu ({info['cpu_count']} cores)"),
        "setup": {
            "model": "default (SmolLM2-135M-Instruct)"
            if args.shape == "default"
            else f"{args.shape} configuration, random weights",
            "dtype": runs["sft"]["dtype"],
            "batch_size": args.batch_size,
            "tokens": args.tokens,
            "steps": args.steps,
            "rounds": args.rounds,
            "untimed_warmup_steps": 1,
            "lora": "r=8 alpha=4 all linear",
            "rho": 2.0,
        },
        "runs": runs,
        "ratios_to_sft": ratios,
        "ratios_to_sft_by_round": [ratios_to_sft(r) for r in measured_rounds],  # the spread between rounds
        # the names: time of a Vaccine step (tau=1), amortised over a tau=100 run, peak memory
        "ratios": {
            "vaccine_tau1": ratios["vaccine_tau1_time"],
            "vaccine_tau100": ratios["vaccine_tau100_amortised_time"],
            "memory_vaccine_tau1": ratios["vaccine_tau1_memory"],
        },
        "paper": PAPER,
        "memory_measure": "torch.cuda.max_memory_allocated" if on_gpu else "peak RSS of the worker process",
    }
    label = "cuda" if on_gpu else "cpu"
    suffix = "" if args.shape == "default" and not on_gpu else f"-{args.shape}"
    out = args.out or RESULTS / f"step_cost-{label}{suffix}-{info['cpu_count']}cores.json"
    if on_gpu and args.out is None:
        out = RESULTS / f"step_cost-cuda-{args.shape}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
