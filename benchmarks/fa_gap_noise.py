"""How much of an arm's FA gap to SFT is the 200 rows' sampling, and how much the seed: read from the
safety grid's archived answers (nothing is trained, generated or judged).

The default's rule reads FA's gap to SFT (no more than 2 points below) from a 3-seed mean. Each seed's gap
is paired row by row (the same 200 SST-2 rows, the arm's model against SFT's at that seed), so its
sampling error comes from the rows on which the two models disagree; the spread of the per-seed gaps
adds whatever the seed itself moves. Where the seeds' spread is several times the rows' error, more rows
would not make the rule's reading firmer: more seeds would.

Pooled over every arm read (each arm's seeds' variance weighted by its degrees of freedom), the per-seed
spread says how often a k-seed mean passes the 2-point limit for a given true cost, and how many seeds a
reading needs before a stack that costs nothing passes it 19 times in 20: a planning figure for the next
confirmation, never a re-reading of an arm already judged.

    .venv/bin/python benchmarks/fa_gap_noise.py --regime align120 --arms resta-harmful-0.5 --seeds 6 7 8

Writes benchmarks/results/fa_gap_noise-REGIME.json (every archived pair of the arms and seeds named).
"""

import argparse
import json
import math
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from defense_rule import FA_LIMIT
from safety_grid import ARMS, MAIN_FRACTION, REGIMES, Grid, archived_grid

from vaccine_core.moderation import RefusalPhraseJudge
from vaccine_core.safety_eval import ProtocolConfig


def paired_gap(arm: list[bool], baseline: list[bool]) -> dict[str, Any]:
    """The arm's FA minus the baseline's on the same rows, in points, with its standard error over rows
    (paired: only the rows where the two disagree carry it)."""
    n = len(arm)
    if n != len(baseline):
        raise ValueError("the two FA lists must cover the same rows")
    gained = sum(a and not b for a, b in zip(arm, baseline, strict=True))
    lost = sum(b and not a for a, b in zip(arm, baseline, strict=True))
    variance = (gained + lost - (gained - lost) ** 2 / n) / n**2
    return {
        "gap": round(100 * (gained - lost) / n, 2),
        "rows_se": round(100 * math.sqrt(max(variance, 0.0)), 2),
        "gained": gained,
        "lost": lost,
    }


def spread(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean gap, the seeds' standard deviation and the two standard errors of the mean it implies:
    over seeds (what the seeds show) and over rows alone (if the seed moved nothing)."""
    gaps = [s["gap"] for s in per_seed]
    k = len(gaps)
    rows_se = math.sqrt(sum(s["rows_se"] ** 2 for s in per_seed)) / k
    seeds_sd = statistics.stdev(gaps) if k > 1 else None
    return {
        "mean_gap": round(statistics.fmean(gaps), 2),
        "seeds_sd": None if seeds_sd is None else round(seeds_sd, 2),
        "se_of_mean_over_seeds": None if seeds_sd is None else round(seeds_sd / math.sqrt(k), 2),
        "se_of_mean_rows_alone": round(rows_se, 2),
    }


SEEDS_READ = 3  # what the rule's mean is taken over today
TRUE_COSTS = (0.0, -1.0, -2.0, -4.0)


def pooled(arms: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The per-seed standard deviation of FA gaps pooled over arms (None where no arm has two seeds), the
    chance that a ``SEEDS_READ``-seed mean stays within the limit at each true cost, and the seeds a mean
    needs for a stack that costs nothing to pass 95 % of the time."""
    squares = degrees = 0.0
    for arm in arms.values():
        gaps = [s["gap"] for s in arm["seeds"]]
        if len(gaps) > 1:
            squares += statistics.variance(gaps) * (len(gaps) - 1)
            degrees += len(gaps) - 1
    if not degrees:
        return None
    sd = math.sqrt(squares / degrees)
    se = sd / math.sqrt(SEEDS_READ)
    normal = statistics.NormalDist()
    return {
        "seeds_sd": round(sd, 2),
        "degrees_of_freedom": int(degrees),
        f"pass_probability_{SEEDS_READ}_seeds": {
            f"{cost:+.0f}": round(normal.cdf((cost + FA_LIMIT) / se), 3) for cost in TRUE_COSTS
        },
        "seeds_for_95pct_pass_at_no_cost": math.ceil((normal.inv_cdf(0.95) * sd / FA_LIMIT) ** 2),
    }


def main(argv: list[str] | None = None, grid: Grid | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regime", choices=list(REGIMES), default="align120")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--baseline", choices=list(ARMS), default="sft")
    parser.add_argument("--name", default=None, help="suffix of the result file (default: the regime)")
    args = parser.parse_args(argv)
    # FA needs no judge: the refusal-phrase one stands in so that no learned judge is loaded or trained
    grid = grid or archived_grid(ProtocolConfig(max_new_tokens=128), judge=RefusalPhraseJudge())
    bench = grid.benchmark(REGIMES[args.regime])

    def fa_of(arm: str, seed: int) -> list[bool] | None:
        spec = partial(bench.attacked, ARMS[arm], MAIN_FRACTION, seed)(False)
        return grid.outputs(spec, bench)["fa_correct"] if grid.has_outputs(spec) else None

    arms: dict[str, Any] = {}
    for arm in args.arms:
        per_seed = []
        for seed in args.seeds:
            mine, theirs = fa_of(arm, seed), fa_of(args.baseline, seed)
            if mine is None or theirs is None:
                print(f"{arm} seed {seed}: not archived with its baseline, left out", file=sys.stderr)
                continue
            per_seed.append({"seed": seed, **paired_gap(mine, theirs)})
        if per_seed:
            arms[arm] = {"seeds": per_seed, **spread(per_seed)}
            print(json.dumps({arm: arms[arm]}))
    result = {
        "regime": args.regime,
        "baseline": args.baseline,
        "fraction": MAIN_FRACTION,
        "fa_rows": len(grid.fa_rows),
        "arms": arms,
        "pooled": pooled(arms),
        "machine": machine_info(),  # where it was read; the answers' own machines are in the archive
        **provenance(__file__),
    }
    print(json.dumps({"pooled": result["pooled"]}))
    out = RESULTS / f"fa_gap_noise-{args.name or args.regime}.json"
    write_result(out, result)
    return result


if __name__ == "__main__":
    main()
