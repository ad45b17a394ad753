"""Time per step and peak memory of SFT, Vaccine (tau=1) and Vaccine (tau=100) on one batch shape.

Each configuration runs in its own process (so peak memory is its own), through the real training loop,
with a LoRA adapter (r=8 on every projection). The first step of each run is a warm-up and is not timed.
With tau=100 the timed steps all reuse the carried perturbation; the figure that counts over a whole run
is the amortised cost, one refresh (a tau=1 step) per 100 steps: (t_vaccine + 99 * t_reuse) / 100.

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
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, provenance

CONFIGS = {"sft": ("sft", 1), "vaccine_tau1": ("vaccine", 1), "vaccine_tau100": ("vaccine", 100)}
RESULTS = Path(__file__).parent / "results"
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
        "seconds_per_step": sum(timed) / len(timed),
        "step_seconds": timed,
        "cpu_seconds_per_step": sum(cpu) / len(cpu),
        "peak_mib": peak,
    }


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

    runs = {}
    for name in CONFIGS:
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--shape",
            args.shape,
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
            f"({runs[name]['cpu_seconds_per_step']:.3f} s of CPU)  peak {runs[name]['peak_mib']:9.1f} MiB",
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
            "untimed_warmup_steps": 1,
            "lora": "r=8 alpha=4 all linear",
            "rho": 2.0,
        },
        "runs": runs,
        "ratios_to_sft": ratios,
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
