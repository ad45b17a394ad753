"""Whether a safety-grid model's answers depend on the machine that trained it and generated them.

The grid archives every model's answers, so a summary can compare an arm generated on one machine with an
arm archived from another. This takes archived models of one arm, trains each again here (or finds it in
this machine's cache), generates its protocol answers again, and judges both answer sets with this
machine's judge: HS, degenerate share and FA per decoding for each, and the share of answers that are
the same text.

    .venv/bin/python benchmarks/answers_across_machines.py --regime align120 --arm sft --seeds 0

Writes benchmarks/results/answers_across_machines-REGIME-ARM.json.
"""

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from safety_grid import ARMS, DECODINGS, MAIN_FRACTION, REGIMES, Grid, archived_grid, figures

from vaccine_core.safety_eval import ProtocolConfig


def same_text_share(first: dict, second: dict) -> dict[str, float]:
    """Per decoding, the share of answers (every prompt set, every sample) that are the same text."""
    shares = {}
    for decoding in DECODINGS:
        pairs = [
            (a, b)
            for prompt_set, answers in first["answers"].items()
            for x, y in zip(answers[decoding], second["answers"][prompt_set][decoding], strict=True)
            for a, b in zip(x, y, strict=True)
        ]
        shares[decoding] = round(100 * sum(a == b for a, b in pairs) / len(pairs), 1)
    return shares


def summary(grid: Grid, outputs: dict[str, Any]) -> dict[str, Any]:
    """Where the answers were made, and their HS, degenerate and refusal shares and FA per decoding, as
    ``grid``'s judge reads them."""
    shown = ("hs", "degenerate", "refusal", "fa")
    judged = grid.judged(outputs)
    by_decoding = {d: figures([judged], [outputs["fa_correct"]], d)["figures"] for d in DECODINGS}
    return {
        "device": outputs.get("device", "unknown"),
        **{d: {k: v for k, v in values.items() if k in shown} for d, values in by_decoding.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regime", choices=list(REGIMES), default="align120")
    parser.add_argument("--arm", choices=list(ARMS), default="sft")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    config = ProtocolConfig(max_new_tokens=128)
    archived = archived_grid(config)
    bench = archived.benchmark(REGIMES[args.regime])
    seeds = {}
    with tempfile.TemporaryDirectory() as fresh_cache:
        # finds no answers, so generates them; judged by the archived grid's judge
        here = Grid(config, Path(fresh_cache), archive=None, judge=archived.judge)
        for seed in args.seeds:
            spec = partial(bench.attacked, ARMS[args.arm], MAIN_FRACTION, seed)
            if not archived.has_outputs(spec(False)):
                parser.error(f"seed {seed} of {args.arm} has no archived answers to compare with")
            model = spec(True)
            answer_sets = {"archived": archived.outputs(model, bench), "here": here.outputs(model, bench)}
            seeds[seed] = {
                "same_text_percent": same_text_share(*answer_sets.values()),
                **{name: summary(archived, out) for name, out in answer_sets.items()},
            }
            print(json.dumps({seed: seeds[seed]}, indent=1))
    result = {
        "regime": args.regime,
        "arm": args.arm,
        "fraction": MAIN_FRACTION,
        "judge": str(getattr(archived.judge, "path", "")),
        "seeds": seeds,
        "machine": machine_info(),
        **provenance(__file__),
    }
    out = RESULTS / f"answers_across_machines-{args.regime}-{args.arm}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
