"""Does the pre-screen find harmful rows hidden in a benign upload, by line number?

Builds SST-2 fine-tuning rows with a fraction of BeaverTails harmful pairs mixed in (the paper's attack
data), pre-screens the file with a judge, and compares the flagged line numbers with the rows known to be
harmful: recall (harmful rows found), precision, and benign rows wrongly flagged.

    .venv/bin/python benchmarks/prescreen_mix.py --judge default
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, provenance

from vaccine_core.mixing import build_mix, write_rows
from vaccine_core.moderation import load_judge
from vaccine_core.moderation.dataset import LabelledPair, alpaca_question
from vaccine_core.moderation.prescreen import prescreen
from vaccine_core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", default="default")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--harmful-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = build_mix("sst2", args.n, args.harmful_fraction, get_settings().data_dir, seed=args.seed)
    harmful_lines = {i + 1 for i, row in enumerate(rows) if row["harmful"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        write_rows(path, rows)
        report = prescreen(path, load_judge(args.judge))
    flagged = {row.line for row in report.flagged}
    found = flagged & harmful_lines
    # The default judge trained on the attack set's train split: recall on its held-out questions is the
    # figure that says how it does on harmful rows it never saw.
    unseen = {
        i + 1
        for i, row in enumerate(rows)
        if row["harmful"] and LabelledPair(alpaca_question(row), row["output"], True, None, "attack").held_out
    }
    result = {
        "benchmark": "prescreen_mix",
        **provenance("benchmarks/prescreen_mix.py"),
        "machine": machine_info(),
        "setup": {"task": "sst2", "rows": args.n, "harmful_rows": len(harmful_lines), "seed": args.seed},
        "judge": report.judge,
        "flagged_rows": len(flagged),
        "recall": len(found) / len(harmful_lines) if harmful_lines else None,
        "precision": len(found) / len(flagged) if flagged else None,
        "benign_rows_flagged": len(flagged - harmful_lines),
        "unseen_harmful_rows": len(unseen),
        "recall_on_unseen_harmful": len(flagged & unseen) / len(unseen) if unseen else None,
        "missed_lines": sorted(harmful_lines - flagged),
        "wrongly_flagged_lines": sorted(flagged - harmful_lines),
        "categories": report.categories,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in {"machine"}}, indent=2))
    name = "default" if args.judge == "default" else Path(args.judge).name
    out = Path(__file__).parent / "results" / f"prescreen_mix-{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
