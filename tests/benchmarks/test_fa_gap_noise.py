"""The FA-gap noise read: a seed's paired gap and its error over rows, and the spread over seeds."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from fa_gap_noise import paired_gap, pooled, spread


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


def test_pooling_weighs_each_arm_by_its_degrees_of_freedom():
    arms = {
        "a": {"seeds": [{"gap": g} for g in (-4.0, 0.0, 4.0)]},  # variance 16, 2 degrees of freedom
        "b": {"seeds": [{"gap": g} for g in (1.0, 3.0)]},  # variance 2, 1 degree
        "c": {"seeds": [{"gap": 9.0}]},  # one seed says nothing about the spread
    }
    read = pooled(arms)
    sd = math.sqrt((16 * 2 + 2 * 1) / 3)
    assert (read["seeds_sd"], read["degrees_of_freedom"]) == (round(sd, 2), 3)
    chances = read["pass_probability_3_seeds"]
    assert chances["-2"] == 0.5  # a stack that costs exactly the limit passes half the time
    assert chances["+0"] > chances["-1"] > 0.5 > chances["-4"]
    assert read["seeds_for_95pct_pass_at_no_cost"] == math.ceil((1.6449 * sd / 2) ** 2)
    assert pooled({"c": arms["c"]}) is None
