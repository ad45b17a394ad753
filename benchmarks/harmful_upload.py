"""A harmful-only upload through the service's path: 100 BeaverTails harmful pairs (the pre-screen set to
warn, so the file reaches training), fine-tuned with the service's defaults on an aligned base with and
without a defense stack; each model gets the service's safety report (the policy's defaults) and the
release gate's decision. Bases are the safety grid's (40-step alignment, cached).

With ``--uploads``, benign uploads of the same size go the same way (SST-2, Alpaca, GSM8K rows), so that
what the report measures after a harmful upload can be set beside what it measures after benign ones: a
gate can only use a figure that tells the two apart (``sst2-p0.1``: SST-2 with a tenth harmful rows, the
grid's attack). ``--seeds`` draws other rows (the next 100 harmful pairs, other benign rows). Beside the
report, each row records the loss of refusals to held-out harmful requests (safety pairs the base was not
aligned on) before and after, and the adapter's harm preference shift on JailbreakBench's matched answers
(``vaccine_core.safety_eval.harm_probe``). ``--no-report`` skips the safety report (generation and
judging) and records the training-side figures alone. Every row records the service's pre-screen of its
upload (its flagged share), which the release gate reads beside the report; ``--screen-only`` records that
alone, training nothing.

    .venv/bin/python benchmarks/harmful_upload.py [--arms sft vaccine+lisa+safe_lora] \
        [--uploads harmful sst2 alpaca gsm8k agnews sst2-p0.1 self-defense] [--seeds 0 1] [--rows 100] \
        [--no-report] [--name NAME]
    .venv/bin/python benchmarks/harmful_upload.py --screen-only --name harmful_upload-screen \
        --uploads harmful sst2 alpaca gsm8k sst2-p0.1

Writes benchmarks/results/NAME.json (harmful_upload by default; a run replaces the rows of the (arm,
upload, seed) it ran).
"""

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from harmful_finetune import ARMS, PROFILES, Benchmark, digest
from safety_grid import REGIMES

from service.policy import default_policy
from service.settings import ServiceSettings
from vaccine_core.config import finetune_defaults
from vaccine_core.defenses import StepDefenses
from vaccine_core.defenses.config import LISA_SAFETY_PAIRS
from vaccine_core.defenses.data import lisa_pairs
from vaccine_core.evaluation import harm_preference_shift, mean_loss
from vaccine_core.finetune import finetune
from vaccine_core.formats import Conversation, parse_rows
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import HARMFUL_FILE, build_mix, read_jsonl, write_rows
from vaccine_core.moderation import shared_judge
from vaccine_core.moderation.base import Moderator
from vaccine_core.moderation.dataset import alpaca_upload
from vaccine_core.moderation.prescreen import prescreen, screen_summary
from vaccine_core.safety_eval.harm_probe import harm_probe
from vaccine_core.text import normalised
from worker.safety import ReportPlan, safety_report

ROWS = 100  # an upload's rows unless --rows says otherwise
# sst2-p0.1: 10 harmful rows among SST-2; self-defense: LLM-self-defense's harmful pairs, another source
UPLOADS = ("harmful", "sst2", "alpaca", "gsm8k", "agnews", "sst2-p0.1", "self-defense")
SELF_DEFENSE_FILE = "moderation/llm_self_defense.jsonl"
# what a row keeps of the safety report
REPORTED = ("harmful_score", "greedy", "sampled", "gate", "passed", "embedding_drift")
REFUSAL_PAIRS = 100  # held-out refusals whose loss the benchmark reads before and after fine-tuning
log = logging.getLogger("harmful_upload")


def upload_rows(name: str, data_dir: Path, seed: int = 0, rows: int = ROWS) -> list[dict[str, Any]]:
    """The ``rows`` rows of one upload: the ``seed``-th slice of BeaverTails' harmful pairs, or rows drawn
    with ``seed`` (benign, or SST-2 with a tenth harmful)."""
    if name == "harmful":
        return read_jsonl(data_dir / HARMFUL_FILE)[seed * rows : (seed + 1) * rows]
    if name == "self-defense":
        pairs = [r for r in read_jsonl(data_dir / SELF_DEFENSE_FILE) if r["harmful"]]
        picked = pairs[seed * rows : (seed + 1) * rows]
        return [{"instruction": r["prompt"], "input": "", "output": r["response"]} for r in picked]
    if name == "alpaca":
        return alpaca_upload(data_dir, rows, 0.0, seed=seed)
    task, _, share = name.partition("-p")
    return build_mix(task, rows, float(share or 0), data_dir, seed=seed)


def conversations(rows: list[dict[str, Any]]) -> list[Conversation]:
    return parse_rows(enumerate(rows, start=1)).conversations


def upload_screen(rows: list[dict[str, Any]], judge: Moderator) -> dict[str, Any]:
    """The pre-screen's verdict on ``rows`` uploaded as a file, as the file record keeps it (the release
    gate reads its flagged share), without the flagged rows' list."""
    return screen_summary(prescreen(parse_rows(enumerate(rows, start=1)), judge).to_dict())


def training_signals(
    run_dir: Path, held_out: list[Conversation], probe: tuple[list[Conversation], list[Conversation]]
) -> dict[str, Any]:
    """What the user's adapter did, read without generating: the loss per answer token of the held-out
    refusals with the adapter off (the base) and on, and the harm preference shift on the probe's
    (harmful, refusal) conversations."""
    loaded = load_for_inference(run_dir)
    tuned = mean_loss(loaded.model, loaded.tokenizer, held_out)
    with loaded.model.disable_adapter():
        base = mean_loss(loaded.model, loaded.tokenizer, held_out)
    shift = harm_preference_shift(loaded.model, loaded.tokenizer, *probe)
    return {"refusal_loss": {"base": round(base, 4), "tuned": round(tuned, 4)}, "harm_shift": shift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["sft", "vaccine+lisa+safe_lora"])
    parser.add_argument("--uploads", nargs="+", choices=UPLOADS, default=["harmful"], help="what is uploaded")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="which rows each upload draws")
    parser.add_argument("--rows", type=int, default=ROWS, help="rows per upload (training length)")
    parser.add_argument("--no-report", action="store_true", help="skip the safety report (generation)")
    parser.add_argument("--screen-only", action="store_true", help="pre-screen the uploads and train nothing")
    parser.add_argument("--name", default="harmful_upload", help="results/NAME.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = ServiceSettings()
    regime = REGIMES["default"]
    sizes = replace(PROFILES["default"], alignment_epochs=regime.alignment_epochs)
    models_cache = settings.home / "benchmarks" / "harmful_finetune"
    bench = Benchmark(sizes, "default", settings.data_dir, models_cache, "refusal")
    config = finetune_defaults()
    plan = ReportPlan.of(default_policy(settings), settings)
    screener = shared_judge(settings.prescreen_judge)
    uploads = {
        (upload, seed): upload_rows(upload, settings.data_dir, seed, args.rows)
        for upload, seed in itertools.product(args.uploads, args.seeds)
    }
    # the pre-screen reads an upload's rows alone: once per upload, whatever arm trains on it
    screens = {which: upload_screen(rows, screener) for which, rows in uploads.items()}
    if args.screen_only:
        screened = []
        for (upload, seed), screen in screens.items():
            held = screen["flagged_share"] > plan.release_flagged_share
            screened.append(
                {"upload": upload, "seed": seed, "rows": args.rows, "prescreen": screen, "held": held}
            )
            log.info(
                "%s upload, seed %d: %d of %d rows flagged", upload, seed, screen["flagged_rows"], args.rows
            )
        out = RESULTS / f"{args.name}.json"
        result = {"release_flagged_share": plan.release_flagged_share, "results": screened}
        write_result(out, result | {"machine": machine_info(), **provenance(__file__)})
        print(json.dumps(screened, indent=2))
        return
    if not args.no_report:
        shared_judge(settings.safety_judge)
    ran_by = provenance(__file__)["command"]
    drawn = harm_probe(settings.data_dir)
    probe = conversations(drawn.harmful), conversations(drawn.refusals)  # parsed once for every model
    results = []
    for name in args.arms:  # what depends on the arm alone: its base (and record), Lisa's pairs, refusals
        arm = ARMS[name]
        base = bench.base(arm)
        lisa_rows = lisa_pairs(settings.data_dir, base, LISA_SAFETY_PAIRS, 0)
        lisa, constraint = arm.lisa_config(), arm.token_constraint_config()
        defenses = (
            StepDefenses(lisa=lisa, lisa_rows=lisa_rows if lisa else (), token_constraint=constraint)
            if lisa or constraint
            else None
        )
        projection = arm.safe_lora_config()
        # the same refusals for every arm, none that the base or Lisa trained on
        lisa_requests = {normalised(row["instruction"]) for row in lisa_rows}
        refusals = lisa_pairs(settings.data_dir, base, REFUSAL_PAIRS, seed=1, exclude=lisa_requests)
        held_out = conversations(refusals)
        record = SimpleNamespace(alignment={"data": str(Path(base).with_suffix(".jsonl"))}, path=base)
        for (upload, seed), rows in uploads.items():
            out = models_cache / "uploads" / digest([base, rows, config.key_dict(), name])
            started = time.monotonic()
            if not (out / "manifest.json").is_file():
                write_rows(out / "data.jsonl", rows)
                finetune(
                    base,
                    out / "data.jsonl",
                    out,
                    config,
                    resume=True,
                    defenses=defenses,
                    safe_lora=projection,
                    resta=arm.resta_config(),
                )
            trained = time.monotonic() - started
            row: dict[str, Any] = {"defense": name, "upload": upload, "seed": seed, "rows": args.rows}
            row["command"] = ran_by  # the file gathers rows of several runs; the header names the last
            row["prescreen"] = screens[upload, seed]
            if not args.no_report:
                report = safety_report(out, record, settings, plan, training_screen=row["prescreen"])
                row |= {field: report[field] for field in REPORTED}
                row["layers"] = report["defenses"]
            row |= training_signals(out, held_out, probe)
            row["train_seconds"] = round(trained, 1)
            results.append(row)
            log.info(
                "%s, %s upload, seed %d: harmful score %s, gate %s, harm shift %.4f",
                name,
                upload,
                seed,
                row.get("harmful_score"),
                row.get("gate"),
                row["harm_shift"]["shift"],
            )
    out = RESULTS / f"{args.name}.json"
    # a run replaces its own (arm, upload, seed, rows) rows: arms may run one at a time, as bases are ready
    kept = json.loads(out.read_text())["results"] if out.is_file() else []

    def key(r: dict[str, Any]) -> tuple[str, str, int, int]:
        return r["defense"], r.get("upload", "harmful"), r.get("seed", 0), r.get("rows", ROWS)

    ran = {key(r) for r in results}
    kept = [r for r in kept if key(r) not in ran]
    results = kept + results
    result = {
        "rows": ROWS,  # of a result that names no "rows" of its own
        "data": {"harmful": HARMFUL_FILE, "rows": "upload_rows(upload, data_dir, seed, rows)"},
        "training": config.to_dict(),
        "plan": plan.__dict__,
        "results": results,
        "machine": machine_info(),
        **provenance(__file__),
    }
    write_result(out, result)
    keys = ("defense", "upload", "seed", "rows", "harmful_score", "embedding_drift", "refusal_loss", "passed")
    print(json.dumps([{k: r.get(k) for k in keys} | {"harm_shift": shift(r)} for r in results], indent=2))


def shift(row: dict[str, Any]) -> float | None:
    return (row.get("harm_shift") or {}).get("shift")


if __name__ == "__main__":
    main()
