"""Score trained judges side by side, each the same way, to choose the default judge's training options.

For every judge directory given (``vaccine moderation train [options]`` prints one): validation F1 and its
calibrated threshold (from judge.json), training seconds and pairs; the held-out test split of seed 0's
data, scored as the service runs it (in the precision each was calibrated in), overall and per slice, with
BeaverTails' answers and JailbreakBench's test answers labelled by hand (``test``) and as shipped
(``test_shipped_labels``); and the pre-screen benchmark's two uploads (prescreen_mix.py's rows, SST-2 and
Alpaca, 500 rows with 50 harmful), as harmful rows found and benign rows flagged at the judge's own
threshold.

    .venv/bin/python benchmarks/judge_compare.py JUDGE_DIR [JUDGE_DIR ...] --name NAME

Writes benchmarks/results/judge_compare-NAME.json. Judges trained with another seed draw other Alpaca
rows for training, some of them in the Alpaca upload: their Alpaca figure is marked as such.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from prescreen_mix import batched_verdicts, benchmark_uploads, found_by_hand_label, upload_pairs

from vaccine_core.moderation.dataset import beavertails_hand_labels, split
from vaccine_core.moderation.judge_config import OPTIONS_FILE
from vaccine_core.moderation.learned import LearnedJudge, judge_data
from vaccine_core.moderation.metrics import evaluate_judge
from vaccine_core.settings import get_settings


def upload_figures(judge: LearnedJudge, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Harmful rows found and benign rows flagged, each row judged as the pre-screen judges it; the
    harmful rows found also by what their answers do, read by hand."""
    flags = [verdict.flagged for verdict in batched_verdicts(judge, upload_pairs(rows))]
    return {
        "harmful_found": sum(f for f, r in zip(flags, rows, strict=True) if r["harmful"]),
        "benign_flagged": sum(f for f, r in zip(flags, rows, strict=True) if not r["harmful"]),
        "harmful_rows": sum(r["harmful"] for r in rows),
        "harmful_by_hand_label": found_by_hand_label(
            {line for line, flag in enumerate(flags, start=1) if flag}, rows, beavertails_hand_labels()
        ),
    }


def test_figures(judge: LearnedJudge, test: list[Any]) -> dict[str, Any]:
    report = evaluate_judge(judge, test)
    overall = report["overall"]
    return {
        **{k: round(overall[k], 4) for k in ("precision", "recall", "f1")},
        "n": overall["n"],
        "slices_flagged": {
            name: f"{round(m['flag_rate'] * m['n'])}/{m['n']}" for name, m in report["by_slice"].items()
        },
    }


def assess(
    path: Path, tests: dict[str, list[Any]], uploads: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    options = json.loads((path / OPTIONS_FILE).read_text())
    judge = LearnedJudge(path)  # as the service loads it
    return {
        "training": options["training"],
        "train_seconds": options["train_seconds"],
        "train_pairs": options["train_pairs"],
        "threshold": options["threshold"],
        "validation_f1": options.get("calibration", {}).get("f1"),
        "quantized": judge.quantized,
        # the same held-out questions, BeaverTails' answers labelled by hand and as shipped
        **{name: test_figures(judge, test) for name, test in tests.items()},
        "uploads": {name: upload_figures(judge, rows) for name, rows in uploads.items()},
        "alpaca_upload_seen_in_training": options["training"]["seed"] != 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("judges", nargs="+", type=Path)
    parser.add_argument("--name", required=True, help="the results file's suffix")
    args = parser.parse_args()

    data_dir = get_settings().data_dir
    tests = {
        "test": split(judge_data(data_dir, seed=0, hand_labels=True))[2],
        "test_shipped_labels": split(judge_data(data_dir, seed=0, hand_labels=False))[2],
    }
    uploads = benchmark_uploads(data_dir)
    judges = {}
    for path in args.judges:
        judges[path.name] = assess(path, tests, uploads)
        print(path.name, json.dumps({k: v for k, v in judges[path.name].items() if k != "training"}))
    result = {
        "benchmark": "judge_compare",
        **provenance("benchmarks/judge_compare.py"),
        "machine": machine_info(),
        "test_split": {"data_seed": 0, "pairs": {name: len(test) for name, test in tests.items()}},
        "judges": judges,
    }
    out = RESULTS / f"judge_compare-{args.name}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
