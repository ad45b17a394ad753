"""LoRA alignment steps run with whole batches or as runs of similar length (``TrainingConfig.unpadded``):
padded tokens, training time and the weights on the default base's own alignment mix.

    .venv/bin/python benchmarks/lora_unpadded.py [--steps 12] [--rounds 2] [--counts-only] [--name NAME]

Counts first, with no model: over the service's alignment of the default base (its 128-pair mix, safety and
helpful pairs half and half, two epochs of batches of 5), the real tokens and those whole batches and runs
pad to; the same over fine-tuning jobs with the service's defaults on 100-row uploads of each task, clean
and with 10 % harmful rows (``mixing.build_mix``). ``--counts-only`` stops there. Then time: the first
``--steps`` steps of that alignment (SFT or ``--method vaccine``, the bundled model, on this machine's CPU;
with ``--upload``, of a fine-tuning job on that upload instead), whole and by runs, in turn, ``--rounds``
times (each round's order reversed from the last), each its training loop's seconds; and how far the two
ways' adapters and losses lie apart after the first round. Writes benchmarks/results/lora_unpadded-NAME.json
with the machine and the command.
"""

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.config import PerturbationConfig, TrainingConfig, alignment_defaults, finetune_defaults
from vaccine_core.data import SupervisedDataset
from vaccine_core.formats import load_dataset
from vaccine_core.mixing import alignment_rows, build_mix, write_rows
from vaccine_core.models import load_causal_lm, load_tokenizer, resolve_model
from vaccine_core.runs import train_adapter
from vaccine_core.settings import get_settings
from vaccine_core.training import micro_batches, plan_steps
from vaccine_core.unpadded import length_runs

SAFETY_PAIRS = HELPFUL_PAIRS = 64  # the default base's plan: 128 pairs, half of them safety pairs
EPOCHS = 2.0
UPLOADS = [("sst2", 0.0), ("sst2", 0.1), ("agnews", 0.1), ("gsm8k", 0.1)]  # (task, harmful share)
UPLOAD_ROWS = 100


def upload_padding(tokenizer: Any, workdir: Path) -> dict[str, Any]:
    """``padding_counts`` of a fine-tuning job with the service's defaults on each of ``UPLOADS``."""
    config = finetune_defaults()
    counts = {}
    for task, harmful in UPLOADS:
        path = workdir / f"{task}-{float(harmful)}.jsonl"
        write_rows(path, build_mix(task, UPLOAD_ROWS, harmful, get_settings().data_dir))
        dataset = SupervisedDataset(load_dataset(path).conversations, tokenizer, config.max_length)
        counts[f"{task}, {harmful:.0%} harmful"] = padding_counts(dataset, config, tokenizer.pad_token_id)
    return counts


def padding_counts(dataset: SupervisedDataset, config: TrainingConfig, pad_token_id: int) -> dict[str, Any]:
    """Real tokens, and the tokens whole batches and runs pad to, over the whole alignment."""
    _per_epoch, total = plan_steps(len(dataset), config)
    real = whole = runs = passes = 0
    batches = micro_batches(dataset, config, pad_token_id, start=0)
    for _ in range(total * config.gradient_accumulation_steps):
        _epoch, batch = next(batches)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        cut = length_runs(lengths)
        real, whole = real + sum(lengths), whole + batch["input_ids"].numel()
        runs, passes = runs + sum(len(run) * max(lengths[i] for i in run) for run in cut), passes + len(cut)
    return {
        "steps": total,
        "real_tokens": real,
        "whole": {"padded_tokens": whole, "padded_to_real": round(whole / real, 4), "passes": total},
        "runs": {"padded_tokens": runs, "padded_to_real": round(runs / real, 4), "passes": passes},
    }


def trained(
    data: Path, config: TrainingConfig, perturbation: PerturbationConfig, workdir: Path
) -> tuple[float, dict[str, torch.Tensor], list]:
    """The training loop's seconds, the adapter's weights and the step losses of one short alignment."""
    model_path = resolve_model("default").path
    run = train_adapter(
        load_causal_lm(model_path, torch.device("cpu")),
        load_tokenizer(model_path),
        data,
        workdir,
        config,
        perturbation,
        limit=None,
        resume=False,
        on_progress=None,
        should_stop=None,
    )
    weights = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    return run.train.seconds, weights, list(run.train.losses)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="Alignment steps timed in each training.")
    parser.add_argument("--rounds", type=int, default=2, help="Times each way is trained, in turn.")
    parser.add_argument("--counts-only", action="store_true", help="Count padding; train nothing.")
    parser.add_argument("--method", choices=["sft", "vaccine"], default="sft", help="The steps timed.")
    parser.add_argument("--rho", type=float, default=2.0, help="Vaccine's rho (the service's default).")
    parser.add_argument(
        "--upload",
        choices=[f"{task}:{share}" for task, share in UPLOADS],
        help="Time a fine-tuning job's steps on this upload (task:harmful share) instead of the alignment.",
    )
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args(argv)

    config = replace(alignment_defaults(), epochs=EPOCHS)
    with tempfile.TemporaryDirectory() as workdir:
        data = Path(workdir) / "alignment.jsonl"
        write_rows(data, alignment_rows(get_settings().data_dir, SAFETY_PAIRS, HELPFUL_PAIRS))
        tokenizer = load_tokenizer(resolve_model("default").path)
        dataset = SupervisedDataset(load_dataset(data).conversations, tokenizer, config.max_length)
        counts = padding_counts(dataset, config, tokenizer.pad_token_id)
        uploads = upload_padding(tokenizer, Path(workdir))
        print(json.dumps({"alignment": counts, "fine-tuning": uploads}, indent=1), flush=True)
        if args.counts_only:
            out = RESULTS / f"lora_unpadded-{args.name}.json"
            counted = {"alignment": counts, "fine_tuning": uploads}
            out.write_text(
                json.dumps({"machine": machine_info(), **provenance(__file__), **counted}, indent=2) + "\n"
            )
            return out

        timed = "alignment"
        if args.upload:  # a job's steps: the upload counted above, the service's fine-tuning defaults
            task, share = args.upload.split(":")
            timed, data, config = (
                args.upload,
                Path(workdir) / f"{task}-{float(share)}.jsonl",
                finetune_defaults(),
            )
        seconds: dict[str, list[float]] = {"whole": [], "runs": []}
        first: dict[str, tuple[dict[str, torch.Tensor], list]] = {}
        for round_ in range(args.rounds):
            for way in ("whole", "runs") if round_ % 2 == 0 else ("runs", "whole"):
                short = replace(config, max_steps=args.steps, unpadded=way == "runs")
                perturbation = PerturbationConfig(args.method, rho=args.rho)
                took, weights, losses = trained(data, short, perturbation, Path(workdir) / f"{way}-{round_}")
                seconds[way].append(round(took, 2))
                first.setdefault(way, (weights, losses))
                print(way, took, "s", flush=True)
    (runs_weights, runs_losses), (whole_weights, whole_losses) = first["runs"], first["whole"]
    per_step = {way: statistics.mean(times) / args.steps for way, times in seconds.items()}
    result = {
        "machine": machine_info(),
        **provenance(__file__),
        "padding": counts,
        "fine_tuning_padding": uploads,
        "timed": timed,
        "method": args.method,
        "rho": args.rho if args.method == "vaccine" else None,
        "timed_steps": args.steps,
        "train_seconds": seconds,
        "seconds_per_step": {way: round(value, 3) for way, value in per_step.items()},
        "runs_to_whole": round(per_step["runs"] / per_step["whole"], 3),
        "largest_weight_difference": max(
            (runs_weights[n] - whole_weights[n]).abs().max().item() for n in whole_weights
        ),
        "losses": {"whole": whole_losses, "runs": runs_losses},
    }
    out = RESULTS / f"lora_unpadded-{args.name}.json"
    write_result(out, result)
    print(result["runs_to_whole"], result["largest_weight_difference"], "->", out)
    return out


if __name__ == "__main__":
    main()
