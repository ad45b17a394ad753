"""Why a fine-tuned Vaccine base answers some prompts with nothing: the probability that the first token a
model generates ends its turn, on the benchmark's held-out harmful prompts and on its harmless prompts, for
each arm's aligned base and for the models fine-tuned from it.

It reads the models harmful_finetune.py trained: the same options select them, from the same cache (what
is missing is trained first, as the benchmark would; the output says how many were).

    .venv/bin/python benchmarks/end_of_turn_probe.py --arms sft vaccine-rho2 --fractions 0.1 --name default

writes benchmarks/results/end_of_turn_probe-<name>.{json,md}.
"""

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from harmful_finetune import (
    ARMS,
    Benchmark,
    add_size_arguments,
    cache_from_arguments,
    sizes_from_arguments,
)

from vaccine_core.data import render_prompt
from vaccine_core.formats import Message
from vaccine_core.generation import end_of_turn_ids
from vaccine_core.inference import load_for_inference
from vaccine_core.settings import get_settings

log = logging.getLogger("end_of_turn_probe")


@torch.no_grad()
def end_of_turn_first(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: list[list[Message]]
) -> list[tuple[float, bool]]:
    """For each conversation, the probability that the assistant's first token ends the turn, and whether
    that is the most likely first token (one prompt per forward pass: no padding to reason about)."""
    eos = end_of_turn_ids(model, tokenizer)
    device = next(model.parameters()).device
    model.eval()
    probabilities = []
    for messages in conversations:
        encoded = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        logits = model(**encoded.to(device)).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        probabilities.append((probs[eos].sum().item(), int(probs.argmax()) in eos))
    return probabilities


def probe(bench: Benchmark, spec: str | Path) -> dict[str, float]:
    loaded = load_for_inference(spec)
    out: dict[str, float] = {}
    for name, prompts in (("harmful", bench.evals.harmful), ("harmless", bench.evals.harmless)):
        measured = end_of_turn_first(loaded.model, loaded.tokenizer, prompts)
        out[f"{name}_p_end"] = 100.0 * statistics.fmean(p for p, _ in measured)
        # where ending the turn is the most likely first token, greedy decoding answers with nothing
        out[f"{name}_end_first"] = 100.0 * sum(first for _, first in measured) / len(measured)
    return out


COLUMNS = ("harmful_p_end", "harmful_end_first", "harmless_p_end", "harmless_end_first")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Does the model end its turn at once? (first-token end-of-turn probability)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; machine: {report['machine']['processor']}, "
        f"{report['machine']['cpu_count']} CPUs. Models: those of `benchmarks/harmful_finetune.py` with the "
        f"same options ({report['trained']} of them trained by this run, the rest read from its cache). "
        "Prompts: the benchmark's "
        f"{report['harmful_prompts']} held-out harmful and {report['harmless_prompts']} harmless prompts.",
        "",
        "P(end) = mean probability that the first generated token ends the turn, %; end first = share of "
        "prompts where ending the turn is the most likely first token, so that greedy decoding answers with "
        "nothing, %. Fine-tuned rows: mean ± std over the seeds.",
        "",
        "| arm | model | harmful: P(end) | harmful: end first | harmless: P(end) | harmless: end first |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cells = [row["arm"], row["model"]]
        for column in COLUMNS:
            values = row[column]
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.1f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    parser.add_argument("--name", required=True, help="results file stem: end_of_turn_probe-<name>")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    sizes = sizes_from_arguments(args)
    bench = Benchmark(sizes, args.model, get_settings().data_dir, cache_from_arguments(args), args.judge)
    rows = []
    for arm in (ARMS[name] for name in sizes.arms):
        base = bench.base(arm)
        rows.append(
            {
                "arm": arm.name,
                "model": "before fine-tuning",
                **{k: [v] for k, v in probe(bench, base).items()},
            }
        )
        for fraction in sizes.fractions:
            runs = [probe(bench, bench.attack(arm, base, fraction, seed)) for seed in sizes.seeds]
            rows.append(
                {
                    "arm": arm.name,
                    "model": f"fine-tuned, p = {fraction:g}",
                    **{k: [r[k] for r in runs] for k in COLUMNS},
                }
            )
            log.info(
                "%s p=%g: %s",
                arm.name,
                fraction,
                {k: round(statistics.fmean(rows[-1][k]), 1) for k in COLUMNS},
            )
    report = {
        "rows": rows,
        "trained": bench.computed["alignments"] + bench.computed["attacks"],
        "harmful_prompts": len(bench.evals.harmful),
        "harmless_prompts": len(bench.evals.harmless),
        "sizes": sizes.__dict__,
        "machine": machine_info(gpu=True),
        **provenance(__file__),
    }
    stem = RESULTS / f"end_of_turn_probe-{args.name}"
    write_result(stem.with_suffix(".json"), report, indent=1)
    stem.with_suffix(".md").write_text(markdown(report))
    print(stem.with_suffix(".md"))


if __name__ == "__main__":
    main()
