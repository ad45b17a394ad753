"""Throughput of the default judge: (question, answer) pairs scored per second at batch size 32.

Pairs are the held-out moderation pairs (real lengths, up to the judge's max_length tokens), scored once
as a warm-up and then timed over ``--repeats`` passes.

    .venv/bin/python benchmarks/judge_speed.py [--judge DIR] [--name NAME]

Throughput depends on the encoder's shape, not its weights: ``--judge`` times a learned judge already
trained (``vaccine moderation train`` prints its directory) instead of training the service's default.

Writes benchmarks/results/judge_speed-<machine>[-NAME].json.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.moderation.dataset import split
from vaccine_core.moderation.learned import LearnedJudge, ensure_default_judge, judge_data
from vaccine_core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--judge", type=Path, default=None, help="A learned judge's directory (default: the service's)."
    )
    parser.add_argument("--name", default="", help="Appended to the result's file name (the machine's).")
    args = parser.parse_args()

    _train, _validation, held_out = split(judge_data(get_settings().data_dir))
    pairs = [(p.question, p.answer) for p in held_out[: args.pairs]]
    judge_dir = args.judge or ensure_default_judge()
    rates = {}
    for quantize in (False, True):
        judge = LearnedJudge(judge_dir, batch_size=args.batch_size, device=args.device, quantize=quantize)
        judge.score(pairs[: args.batch_size])  # warm-up
        started = time.perf_counter()
        for _ in range(args.repeats):
            judge.score(pairs)
        name = "int8_dynamic" if judge.quantized else "float32"
        rates[name] = len(pairs) * args.repeats / (time.perf_counter() - started)
        print(
            f"{name:13s} {rates[name]:6.1f} pairs/s at batch {args.batch_size} "
            f"({len(pairs)} pairs x {args.repeats})"
        )
    info = machine_info(gpu=args.device is not None and args.device.startswith("cuda"))
    result = {
        "benchmark": "judge_speed",
        **provenance("benchmarks/judge_speed.py"),
        "machine": info,
        "setup": {
            "pairs": len(pairs),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "max_length": judge.max_length,
            "judge": str(judge.path),
        },
        "pairs_per_second": rates,
        "target_pairs_per_second": 50,
    }
    label = "gpu" if "gpu" in info else f"cpu-{info['cpu_count']}cores"
    suffix = f"-{args.name}" if args.name else ""
    out = RESULTS / f"judge_speed-{label}{suffix}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
