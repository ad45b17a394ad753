"""The plateau threshold (benchmarks/judge_calibration.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from judge_calibration import plateau_threshold

from vaccine_core.moderation.learned import calibrate_threshold


def test_the_plateau_s_middle_lies_inside_the_thresholds_near_the_best_f1():
    # three harmful scores high, three benign low, one of each in between: every threshold between the
    # clean groups gives the best F1, and the plateau's middle lies in that gap, not at its top
    scores = [0.9, 0.85, 0.8, 0.5, 0.45, 0.1, 0.05, 0.02]
    labels = [True, True, True, True, False, False, False, False]
    best, best_f1 = calibrate_threshold(scores, labels)
    assert best_f1 == 1.0 and best == (0.5 + 0.45) / 2  # the one clean cut
    assert plateau_threshold(scores, labels, margin=0.0) == best  # one candidate at the best: itself
    wide = plateau_threshold(scores, labels, margin=0.2)
    assert 0.05 < wide < 0.8 and wide != best  # more candidates within the margin: their median
    assert plateau_threshold([0.3, 0.3], [True, False], margin=0.0) == 0.5  # one distinct score
