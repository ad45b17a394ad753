"""Score trained intent gates side by side, each gating the same judge, to choose the gate's training options.

For every gate directory given (``vaccine moderation train-intent [options]`` prints one): its training
seconds, threshold and the validation split's harmless requests that pass it (from intent.json); and the
pre-screen benchmark's two uploads (prescreen_mix.py's rows, SST-2 and Alpaca, 500 rows with 50 harmful),
judged as the pre-screen judges them with the judge's flags gated by that gate: harmful rows found (also
by what their answers do, read by hand) and benign rows flagged. The judge's verdicts are computed once and
given to every gate, so the gates alone differ. Then the mean of each figure over the gates of each
recipe (their training options less the seed).

    .venv/bin/python benchmarks/intent_compare.py GATE_DIR [GATE_DIR ...] --name NAME [--judge default]

Writes benchmarks/results/intent_compare-NAME.json.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from judge_compare import upload_figures
from prescreen_mix import benchmark_uploads

from vaccine_core.moderation import load_judge
from vaccine_core.moderation.base import Moderator, Pair, Verdict
from vaccine_core.moderation.intent import INTENT_FILE, LATER_OPTIONS, IntentGatedJudge, IntentModel
from vaccine_core.settings import get_settings


class RememberedJudge:
    """``judge``'s verdicts, each batch of pairs scored once and given again to whoever asks for it."""

    def __init__(self, judge: Moderator):
        self.judge, self.name = judge, judge.name
        self.verdicts: dict[tuple[Pair, ...], list[Verdict]] = {}

    def score(self, pairs: Sequence[Pair]) -> list[Verdict]:
        key = tuple(pairs)
        if key not in self.verdicts:
            self.verdicts[key] = self.judge.score(pairs)
        return list(self.verdicts[key])  # a copy: the gate replaces the verdicts it turns down


def recipe(training: dict[str, Any]) -> str:
    """A gate's training options less its seed, as one string: the gates of one recipe share it (a gate
    trained before an option existed, with the value that trains as it did)."""
    options = LATER_OPTIONS | training
    return json.dumps({k: v for k, v in options.items() if k != "seed"}, sort_keys=True)


def gate_figures(gate: Path, judge: RememberedJudge, uploads: dict[str, list[dict[str, Any]]]) -> dict:
    options = json.loads((gate / INTENT_FILE).read_text())
    gated = IntentGatedJudge(judge, IntentModel(gate))
    figures = {name: upload_figures(gated, rows) for name, rows in uploads.items()}
    return {
        "gate": gate.name,
        "seed": options["training"]["seed"],
        "recipe": recipe(options["training"]),
        "train_seconds": options["train_seconds"],
        "threshold": options["threshold"],
        "harmless_passing_the_gate": options["validation"]["harmless_passing_the_gate"],
        "uploads": figures,
        "benign_flagged": sum(f["benign_flagged"] for f in figures.values()),
        "harmful_found": sum(f["harmful_found"] for f in figures.values()),
        "hand_harmful_found": sum(
            f["harmful_by_hand_label"].get("harmful", {}).get("flagged", 0) for f in figures.values()
        ),
    }


MEANS = (
    "train_seconds",
    "harmless_passing_the_gate",
    "benign_flagged",
    "harmful_found",
    "hand_harmful_found",
)


def recipe_means(gates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each figure's mean over the gates of each recipe, with the seeds they cover."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for gate in gates:
        groups.setdefault(gate["recipe"], []).append(gate)
    return {
        name: {"seeds": sorted(g["seed"] for g in members)}
        | {figure: round(mean(g[figure] for g in members), 3) for figure in MEANS}
        for name, members in groups.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gates", nargs="+", type=Path)
    parser.add_argument("--judge", default="default", help="the judge whose flags each gate gates")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    judge = RememberedJudge(load_judge(args.judge))
    uploads = benchmark_uploads(get_settings().data_dir)
    gates = [gate_figures(gate, judge, uploads) for gate in args.gates]
    result = {
        "benchmark": "intent_compare",
        **provenance("benchmarks/intent_compare.py"),
        "machine": machine_info(),
        "judge": judge.name,
        "uploads": {
            name: {"rows": len(rows), "harmful": sum(r["harmful"] for r in rows)}
            for name, rows in uploads.items()
        },
        "gates": gates,
        "recipes": recipe_means(gates),
    }
    out = RESULTS / f"intent_compare-{args.name}.json"
    write_result(out, result)
    print(json.dumps(result["recipes"], indent=2))


if __name__ == "__main__":
    main()
