"""The judge's batches run whole or as runs of pairs of similar length (option ``unpadded``): padded tokens
and training time on the default judge's own training pairs.

    .venv/bin/python benchmarks/judge_unpadded.py [--steps 12] [--rounds 2] [--run-costs 0 20 40 80]
        [--name NAME]

Counts first, with no model: over the judge's three epochs of random batches, the real tokens, the tokens
the whole batches pad to, and those the runs pad to, with the encoder passes they take, for each run cost
(what ``unpadded.length_runs`` counts one more pass as, in tokens; the shipped one is
``unpadded.RUN_COST``). Then time: ``train_judge`` on the first ``--steps`` batches' pairs of the default
training pairs (one epoch), whole and with runs at each run cost, in turn, ``--rounds`` times (each round's
order reversed from the last), each its training seconds as the judge records them. Runs are float32's
only (under bfloat16 autocast the judge keeps whole batches), so on a CPU where the judge trains in
bfloat16 every way here trains whole, and the result says so (``bfloat16_autocast``); ``--float32`` times
them in float32 there. Writes benchmarks/results/judge_unpadded-NAME.json with the machine and the command.
"""

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

import vaccine_core.moderation.learned as learned
from vaccine_core.moderation.judge_config import JudgeTrainingConfig
from vaccine_core.settings import get_settings
from vaccine_core.unpadded import RUN_COST, length_runs

WHOLE = "whole"


def padding_counts(lengths: list[int], config: JudgeTrainingConfig, run_costs: list[int]) -> dict[str, Any]:
    """Tokens padded to and passes taken over the judge's epochs, whole and for each run cost."""
    counts: dict[str, Any] = {"real_tokens": sum(lengths) * config.epochs}
    ways = {WHOLE: None, **{f"runs-{cost}": cost for cost in run_costs}}
    for name, cost in ways.items():
        padded = passes = 0
        for epoch in range(config.epochs):
            generator = torch.Generator().manual_seed(config.seed + epoch)
            for chosen in learned.epoch_batches(lengths, config.batch_size, generator, False):
                batch = [lengths[i] for i in chosen]
                runs = [list(range(len(batch)))] if cost is None else length_runs(batch, cost)
                padded += sum(len(run) * max(batch[i] for i in run) for run in runs)
                passes += len(runs)
        counts[name] = {
            "padded_tokens": padded,
            "padded_to_real": round(padded / counts["real_tokens"], 4),
            "encoder_passes": passes,
        }
    return counts


def timed_training(
    pairs: list, config: JudgeTrainingConfig, run_cost: int | None, workdir: Path
) -> tuple[float, bool]:
    """``train_judge``'s training seconds on ``pairs``, one epoch, whole or with runs at ``run_cost``, and
    whether it trained under bfloat16 autocast (then whole, whatever was asked)."""
    target = workdir / "judge"
    with_runs = replace(config, epochs=1, unpadded=run_cost is not None)
    original = learned.length_runs
    if run_cost is not None:
        learned.length_runs = functools.partial(length_runs, run_cost=run_cost)
    try:
        learned.train_judge(pairs, target, with_runs)
    finally:
        learned.length_runs = original
    options = json.loads((target / learned.OPTIONS_FILE).read_text())
    shutil.rmtree(target)
    return options["train_seconds"], options["bfloat16_autocast"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="Batches timed in each training.")
    parser.add_argument("--rounds", type=int, default=2, help="Times each way is trained, in turn.")
    parser.add_argument("--run-costs", type=int, nargs="+", default=sorted({0, 20, 40, 80, RUN_COST}))
    parser.add_argument("--float32", action="store_true", help="Train in float32 where bfloat16 is faster.")
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args(argv)

    config = JudgeTrainingConfig(bfloat16=not args.float32)
    pairs, _validation = learned.judge_training_pairs(get_settings().data_dir, config)
    tokenizer = AutoTokenizer.from_pretrained(str(learned.bundled_encoder()))
    encodings = learned.encode_pairs(
        tokenizer, [(p.question, p.answer) for p in pairs], config.max_length, config.answer_tail
    )
    lengths = [len(e["input_ids"]) for e in encodings]
    counts = padding_counts(lengths, config, args.run_costs)
    print(json.dumps(counts, indent=2), flush=True)

    first = learned.epoch_batches(
        lengths, config.batch_size, torch.Generator().manual_seed(config.seed), False
    )
    timed_pairs = [pairs[i] for chosen in first[: args.steps] for i in chosen]
    ways: list[int | None] = [None, *args.run_costs]
    seconds: dict[str, list[float]] = {}
    precisions: set[bool] = set()
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for cost in ways if round_ % 2 == 0 else ways[::-1]:
                name = WHOLE if cost is None else f"runs-{cost}"
                taken, bfloat16 = timed_training(timed_pairs, config, cost, Path(workdir))
                seconds.setdefault(name, []).append(taken)
                precisions.add(bfloat16)
                print(name, taken, "s", "(bfloat16: whole batches)" if bfloat16 else "", flush=True)
    per_step = {name: statistics.mean(times) / args.steps for name, times in seconds.items()}
    result = {
        "machine": machine_info(),
        **provenance(__file__),
        "shipped_run_cost": RUN_COST,
        "padding": counts,
        "timed_steps": args.steps,
        # under bfloat16 autocast every way trained whole: the ratios then measure nothing of runs
        "bfloat16_autocast": sorted(precisions),
        "train_seconds": seconds,
        "seconds_per_step": {name: round(value, 4) for name, value in per_step.items()},
        "ratio_to_whole": {name: round(value / per_step[WHOLE], 3) for name, value in per_step.items()},
    }
    out = RESULTS / f"judge_unpadded-{args.name}.json"
    write_result(out, result)
    print(json.dumps(result["ratio_to_whole"]), "->", out)
    return out


if __name__ == "__main__":
    main()
