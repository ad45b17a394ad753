"""A harmful-only upload through the service's path: 100 BeaverTails harmful pairs (the pre-screen set to
warn, so the file reaches training), fine-tuned with the service's defaults on an aligned base with and
without a defense stack; each model gets the service's safety report (the policy's defaults) and the
release gate's decision. Bases are the safety grid's (40-step alignment, cached).

    .venv/bin/python benchmarks/harmful_upload.py [--arms sft vaccine+lisa+safe_lora]

Writes benchmarks/results/harmful_upload.json (a run replaces the rows of the arms it ran).
"""

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, provenance
from harmful_finetune import ARMS, PROFILES, Benchmark, digest
from safety_grid import REGIMES

from service.policy import default_policy
from service.settings import ServiceSettings
from vaccine_core.config import finetune_defaults
from vaccine_core.defenses import LisaConfig, StepDefenses
from vaccine_core.defenses.config import LISA_SAFETY_PAIRS
from vaccine_core.defenses.data import lisa_pairs
from vaccine_core.finetune import finetune
from vaccine_core.mixing import HARMFUL_FILE, read_jsonl, write_rows
from vaccine_core.moderation import shared_judge
from worker.safety import ReportPlan, safety_report

ROWS = 100
log = logging.getLogger("harmful_upload")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["sft", "vaccine+lisa+safe_lora"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = ServiceSettings()
    regime = REGIMES["default"]
    sizes = replace(PROFILES["default"], alignment_epochs=regime.alignment_epochs)
    models_cache = settings.home / "benchmarks" / "harmful_finetune"
    bench = Benchmark(sizes, "default", settings.data_dir, models_cache, "refusal")
    rows = read_jsonl(settings.data_dir / HARMFUL_FILE)[:ROWS]
    config = finetune_defaults()
    plan = ReportPlan.of(default_policy(settings), settings)
    shared_judge(settings.safety_judge)
    results = []
    for name in args.arms:
        arm = ARMS[name]
        base = bench.base(arm)
        defenses = None
        if arm.lisa:
            defenses = StepDefenses(
                lisa=LisaConfig(), lisa_rows=lisa_pairs(settings.data_dir, base, LISA_SAFETY_PAIRS, 0)
            )
        projection = arm.safe_lora_config()
        out = models_cache / "uploads" / digest([base, rows, config.to_dict(), name])
        started = time.monotonic()
        if not (out / "manifest.json").is_file():
            write_rows(out / "data.jsonl", rows)
            finetune(
                base, out / "data.jsonl", out, config, resume=True, defenses=defenses, safe_lora=projection
            )
        trained = time.monotonic() - started
        record = SimpleNamespace(alignment={"data": str(Path(base).with_suffix(".jsonl"))}, path=base)
        report = safety_report(out, record, settings, plan)
        results.append(
            {
                "defense": name,
                "harmful_score": report["harmful_score"],
                "greedy": report["greedy"],
                "sampled": report["sampled"],
                "gate": report["gate"],
                "passed": report["passed"],
                "layers": report["defenses"],
                "train_seconds": round(trained, 1),
            }
        )
        log.info("%s: harmful score %.1f, gate %s", name, report["harmful_score"], report["gate"])
    out = Path(__file__).parent / "results" / "harmful_upload.json"
    # a run replaces its own arms' rows: arms may be run one at a time, as their bases become ready
    kept = json.loads(out.read_text())["results"] if out.is_file() else []
    results = [r for r in kept if r["defense"] not in args.arms] + results
    result = {
        "rows": ROWS,
        "data": HARMFUL_FILE,
        "training": config.to_dict(),
        "plan": plan.__dict__,
        "results": results,
        "machine": machine_info(),
        **provenance(__file__),
    }
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps([{k: r[k] for k in ("defense", "harmful_score", "passed")} for r in results], indent=2))


if __name__ == "__main__":
    main()
