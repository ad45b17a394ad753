"""The FA-gap noise read: a seed's paired gap and its error over rows, and the spread over seeds."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from fa_gap_noise import paired_gap, spread


def test_a_seed_s_gap_is_paired_row_by_row():
    # the arm wins row 1 and loses rows 2 and 3; rows 0 and 4 agree and carry no error
    arm = [True, True, False, False, False]
    baseline = [True, False, True, True, False]
    gap = paired_gap(arm, baseline)
    assert (gap["gained"], gap["lost"], gap["gap"]) == (1, 2, -20.0)
    assert gap["rows_se"] == round(100 * math.sqrt((3 - 1 / 5) / 25), 2)
    assert paired_gap(baseline, baseline) == {"gap": 0.0, "rows_se": 0.0, "gained": 0, "lost": 0}
    with pytest.raises(ValueError, match="same rows"):
        paired_gap(arm, baseline[:4])


def test_the_spread_over_seeds_and_the_error_over_rows_alone():
    seeds = [{"gap": g, "rows_se": 1.0} for g in (-2.0, 0.0, 2.0)]
    assert spread(seeds) == {
        "mean_gap": 0.0,
        "seeds_sd": 2.0,
        "se_of_mean_over_seeds": round(2 / math.sqrt(3), 2),
        "se_of_mean_rows_alone": round(math.sqrt(3) / 3, 2),
    }
    assert spread(seeds[:1])["seeds_sd"] is None
