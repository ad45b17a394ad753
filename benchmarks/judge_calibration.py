"""The default judge's flag threshold chosen two ways from its validation split, each applied to the same
trained judges, so that only the threshold differs between them:

- ``shipped``: the best validation F1, ties to the higher threshold (``learned.calibrate_threshold``, what
  judge.json stores);
- ``plateau``: the middle of the plateau, the median of the candidate thresholds whose validation F1 is
  within ``--margin`` of the best (a threshold less at the mercy of a few validation pairs).

For each judge and rule: the threshold, the held-out test split read by hand (F1 and flags by slice, as
``judge_compare.py`` reads them) and the pre-screen benchmark's two uploads as the judge alone flags them.

    .venv/bin/python benchmarks/judge_calibration.py JUDGE_DIR [JUDGE_DIR ...] [--margin 0.01] --name NAME

Writes benchmarks/results/judge_calibration-NAME.json with the machine and the command.
"""

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from judge_compare import test_figures, upload_figures
from prescreen_mix import benchmark_uploads

from vaccine_core.moderation.dataset import split
from vaccine_core.moderation.judge_config import OPTIONS_FILE, JudgeTrainingConfig
from vaccine_core.moderation.learned import (
    LearnedJudge,
    calibrate_threshold,
    judge_data,
    judge_split,
    labelled_scores,
)
from vaccine_core.moderation.metrics import binary_metrics
from vaccine_core.settings import get_settings


def plateau_threshold(scores: Sequence[float], labels: Sequence[bool], margin: float) -> float:
    """The median of the candidate thresholds (halfway between neighbouring distinct scores, as
    ``calibrate_threshold`` takes them) whose F1 on these labelled scores is within ``margin`` of the best."""
    distinct = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(distinct)] or [0.5]
    f1 = [binary_metrics([x >= t for x in scores], labels)["f1"] for t in candidates]
    best = max(f1)
    return statistics.median(t for t, value in zip(candidates, f1, strict=True) if value >= best - margin)


def assess(
    path: Path, margin: float, test: list[Any], uploads: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """One judge's thresholds by both rules, and what each reads on the test split and the uploads."""
    options = json.loads((path / OPTIONS_FILE).read_text())
    config = JudgeTrainingConfig(**options["training"])
    _train, validation, _test = judge_split(get_settings().data_dir, config)
    judge = LearnedJudge(path)  # loaded once; each rule only sets its threshold
    scores = labelled_scores(judge, validation)
    labels = [pair.harmful for pair in validation]
    shipped, _f1 = calibrate_threshold(scores, labels)
    thresholds = {"shipped": shipped, "plateau": plateau_threshold(scores, labels, margin)}
    rules = {}
    for rule, threshold in thresholds.items():
        judge.threshold = threshold
        rules[rule] = {
            "threshold": threshold,
            "validation_f1": binary_metrics([x >= threshold for x in scores], labels)["f1"],
            "test": test_figures(judge, test),
            "uploads": {name: upload_figures(judge, rows) for name, rows in uploads.items()},
        }
    return {"seed": config.seed, "stored_threshold": options["threshold"], **rules}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("judges", nargs="+", type=Path)
    parser.add_argument("--margin", type=float, default=0.01, help="F1 below the best still on the plateau")
    parser.add_argument("--name", required=True, help="the results file's suffix")
    args = parser.parse_args(argv)

    data_dir = get_settings().data_dir
    test = split(judge_data(data_dir, seed=0, hand_labels=True))[2]  # judge_compare's test split
    uploads = benchmark_uploads(data_dir)
    judges = {}
    for path in args.judges:
        judges[path.name] = assess(path, args.margin, test, uploads)
        figures = {rule: judges[path.name][rule]["test"]["f1"] for rule in ("shipped", "plateau")}
        print(path.name, json.dumps(figures), flush=True)
    result = {
        "benchmark": "judge_calibration",
        **provenance(__file__),
        "machine": machine_info(),
        "margin": args.margin,
        "judges": judges,
    }
    out = RESULTS / f"judge_calibration-{args.name}.json"
    write_result(out, result)
    return out


if __name__ == "__main__":
    main()
