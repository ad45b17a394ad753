"""How much of a BackdoorAlign adapter's safety rests on its secret: the adapter answering protocol v2's
harmful and harmless prompts served as the service serves it (the secret first) and as a user who downloaded
it would run it (the base's own chat template, no secret).

The same prompts, decodings and judge as the safety grid; the served figures are measured here again, so
the two readings of each adapter differ by the secret alone.

    .venv/bin/python benchmarks/secret_dependence.py RUN_DIR [RUN_DIR ...] --judge JUDGE [--name NAME]

Writes benchmarks/results/secret_dependence-NAME.json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.defenses.backdoor_align import read_secret
from vaccine_core.inference import load_for_inference
from vaccine_core.models import load_tokenizer
from vaccine_core.moderation import load_judge
from vaccine_core.safety_eval import ProtocolConfig, generate_answers, judge_answers, load_split, summarise
from vaccine_core.settings import get_settings

# the grid's protocol without the borderline prompts, which the grid reports apart from the rule
CONFIG = ProtocolConfig(borderline_prompts=0)


def readings(run: Path, judge: Any, prompts: Any, config: ProtocolConfig = CONFIG) -> dict[str, Any]:
    """HS and over-refusal, greedy and sampled, with the secret and without it."""
    if read_secret(run) is None:
        raise SystemExit(f"{run} was not trained with BackdoorAlign (no secret kept beside it)")
    loaded = load_for_inference(run)
    plain = load_tokenizer(Path(loaded.manifest["base_model"]["path"]))
    measured: dict[str, Any] = {}
    for served, tokenizer in (("served", loaded.tokenizer), ("without_secret", plain)):
        answers = generate_answers(loaded.model, tokenizer, prompts, config)
        summary = summarise(judge_answers(answers, prompts, config, judge))
        measured[served] = {
            decoding: {
                "hs": sets["harmful"]["hs"],
                "harmful_degenerate": sets["harmful"]["degenerate"],
                "harmful_refused": sets["harmful"]["refusal"],
                "over_refusal": sets["harmless"]["over_refusal"],
            }
            for decoding, sets in summary.items()
        }
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="fine-tuning runs trained with BackdoorAlign")
    parser.add_argument("--judge", default="default")
    parser.add_argument("--name", default="default")
    args = parser.parse_args()
    started = time.perf_counter()
    prompts = load_split(get_settings().data_dir)
    judge = load_judge(args.judge)
    runs = {str(run): readings(run, judge, prompts) for run in args.runs}
    mean = {
        served: {
            decoding: {
                figure: statistics.mean(r[served][decoding][figure] for r in runs.values())
                for figure in next(iter(runs.values()))[served][decoding]
            }
            for decoding in next(iter(runs.values()))[served]
        }
        for served in ("served", "without_secret")
    }
    result = {
        "benchmark": "secret_dependence",
        **provenance(" ".join(sys.argv)),
        "machine": machine_info(),
        "judge": judge.name,
        "protocol": {"harmful": CONFIG.harmful_prompts, "harmless": CONFIG.harmless_prompts},
        "runs": runs,
        "mean": mean,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(RESULTS / f"secret_dependence-{args.name}.json", result)
    for served, decodings in mean.items():
        for decoding, figures in decodings.items():
            print(
                f"{served:>15} {decoding:>7}: HS {figures['hs']:.1f}, harmful refused "
                f"{figures['harmful_refused']:.1f}, over-refusal {figures['over_refusal']:.1f}"
            )


if __name__ == "__main__":
    main()
