"""How far a fine-tuning run moved each answer position from its aligned base, and what weight the token
constraint gives it at the end: averaged by row kind (harmful or benign) and by position (the first answer
token, tokens 2-5, the rest).

    .venv/bin/python benchmarks/token_constraint_weights.py RUN [RUN ...] --name NAME

Each RUN is a fine-tuning run's directory whose ``data.jsonl`` rows carry ``harmful`` (a grid attack's).
For every row: the run's log-probability of each answer token and its base's (the same model with the
adapter off), their difference ``delta`` in nats, and the weight ``2 * (1 - sigmoid(beta_t * delta))`` at
the token constraint's default betas. Writes results/token_constraint_weights-NAME.json.
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.data import SupervisedDataset, collate
from vaccine_core.defenses import TokenConstraintConfig
from vaccine_core.defenses.token_constraint import answer_positions, token_betas
from vaccine_core.formats import parse_rows
from vaccine_core.inference import load_for_inference
from vaccine_core.losses import constraint_weights, token_logprobs

POSITIONS = {"first": (0, 0), "2-5": (1, 4), "rest": (5, 1 << 30)}


def run_positions(run: Path, config: TokenConstraintConfig) -> dict[str, dict[str, float]]:
    loaded = load_for_inference(run)
    rows = [json.loads(line) for line in (run / "data.jsonl").read_text().splitlines() if line.strip()]
    conversations = parse_rows(enumerate(rows, 1)).conversations
    data = SupervisedDataset(conversations, loaded.tokenizer, 256)
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for conversation, example in zip(conversations, data.examples, strict=True):
        batch = collate([example], loaded.tokenizer.pad_token_id)
        with torch.no_grad():
            tuned, answer = token_logprobs(loaded.model, batch)
            with loaded.model.disable_adapter():
                base, _ = token_logprobs(loaded.model, batch)
        position, betas = answer_positions(answer)[answer], token_betas(answer, config)[answer]
        tuned, base = tuned[answer], base[answer]
        weights = constraint_weights(tuned, base, betas)
        kind = "harmful" if rows[conversation.line - 1]["harmful"] else "benign"
        for name, (low, high) in POSITIONS.items():
            chosen = (position >= low) & (position <= high)
            if chosen.any():
                found[kind, name].append(
                    (
                        float((tuned - base)[chosen].mean()),
                        float(weights[chosen].mean()),
                        float(base[chosen].mean()),
                    )
                )
    return {
        f"{kind} {name}": {
            "rows": len(values),
            "delta_nats": round(mean(v[0] for v in values), 3),
            "weight": round(mean(v[1] for v in values), 3),
            "base_logprob": round(mean(v[2] for v in values), 3),
        }
        for (kind, name), values in sorted(found.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    config = TokenConstraintConfig()
    record = {
        "config": config.to_dict(),
        "runs": {str(run): run_positions(run, config) for run in args.runs},
        "machine": machine_info(),
        **provenance(__file__),
    }
    path = RESULTS / f"token_constraint_weights-{args.name}.json"
    write_result(path, record, indent=1)
    for run, positions in record["runs"].items():
        print(run)
        for key, value in positions.items():
            print(f"  {key:14s} {value}")
    print("->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
