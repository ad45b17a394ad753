"""Wall time of a fine-tuning job with a defense layer against plain LoRA, on one machine, in turn.

    .venv/bin/python benchmarks/defense_cost.py --run DIR --base BASE --layers token_constraint \
        --repeats 3 --name cpu-2cores-intel-amx

``--run`` is a fine-tuning run's directory (a grid attack's: its ``data.jsonl`` and its manifest's
training settings), ``--base`` the aligned base it started from. Each repeat fine-tunes plain LoRA and
then each layer, in a fresh directory each time, so that drift in the machine's speed reaches every
variant alike. A job's time is the whole ``finetune`` call (loading the base, the layer's set-up, the
training loop and saving); the loop's own seconds and the layer's (its set-up and its hooks in the
loop) are kept beside it. ``results/defense_cost-NAME.json`` holds every time, each variant's median
and the medians' ratios to plain LoRA's.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.artifacts import read_manifest
from vaccine_core.config import TrainingConfig
from vaccine_core.defenses import LisaConfig, StepDefenses, TokenConstraintConfig
from vaccine_core.defenses.config import LISA_SAFETY_PAIRS, RestaConfig, SafeLoraConfig
from vaccine_core.defenses.data import lisa_pairs
from vaccine_core.finetune import finetune
from vaccine_core.settings import get_settings

# the layers that act while the user's rows train, then the edits of the saved adapter (each at its
# library default, or at the scale given with --resta-scale)
LAYERS = ("token_constraint", "lisa", "safe_lora", "resta")
PLAIN = "plain"


def layer_defenses(layer: str, base: Path, seed: int) -> StepDefenses | None:
    if layer == "token_constraint":
        return StepDefenses(token_constraint=TokenConstraintConfig())
    if layer == "lisa":
        return StepDefenses(
            lisa=LisaConfig(), lisa_rows=lisa_pairs(get_settings().data_dir, base, LISA_SAFETY_PAIRS, seed)
        )
    return None


def time_job(run: Path, base: Path, layer: str, config: TrainingConfig, resta_scale: float) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"defense-cost-{layer}-"))
    try:
        started = time.perf_counter()
        result = finetune(
            base,
            run / "data.jsonl",
            out,
            config,
            defenses=layer_defenses(layer, base, config.seed),
            safe_lora=SafeLoraConfig() if layer == "safe_lora" else None,
            resta=RestaConfig(scale=resta_scale) if layer == "resta" else None,
        )
        job = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ran = (result.manifest or {}).get("defenses", {})
    edit_seconds = ran.get(layer, {}).get("seconds", 0.0)
    return {
        "layers": sorted(ran),  # what the job's manifest says ran
        "job_seconds": round(job, 2),
        "train_seconds": round(result.train.seconds, 2),
        # a training layer's set-up and hooks, or an edit's own seconds after the adapter is saved
        "layer_seconds": round(result.train.defense_seconds.get(layer, edit_seconds), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a fine-tuning run's directory")
    parser.add_argument("--base", type=Path, required=True, help="the aligned base it started from")
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=["token_constraint"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resta-scale", type=float, default=RestaConfig.scale, help="RESTA's scale")
    parser.add_argument("--name", required=True, help="results/defense_cost-NAME.json; name the machine")
    args = parser.parse_args(argv)

    config = TrainingConfig(**read_manifest(args.run)["training"])
    variants = [PLAIN, *args.layers]
    times: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            times[variant].append(time_job(args.run, args.base, variant, config, args.resta_scale))
            print(f"repeat {repeat + 1}/{args.repeats} {variant}: {times[variant][-1]}", flush=True)

    medians = {
        v: {
            k: statistics.median(t[k] for t in runs)
            for k in ("job_seconds", "train_seconds", "layer_seconds")
        }
        for v, runs in times.items()
    }
    plain = medians[PLAIN]
    record = {
        "run": str(args.run),
        "base": str(args.base),
        "training": config.to_dict(),
        **({"resta_scale": args.resta_scale} if "resta" in args.layers else {}),
        "times": times,
        "medians": medians,
        "ratios": {
            layer: {
                "job": round(medians[layer]["job_seconds"] / plain["job_seconds"], 3),
                "train": round(medians[layer]["train_seconds"] / plain["train_seconds"], 3),
            }
            for layer in args.layers
        },
        "machine": machine_info(),
        **provenance(__file__),
    }
    path = RESULTS / f"defense_cost-{args.name}.json"
    write_result(path, record, indent=1)
    print(json.dumps(record["ratios"]), "->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
