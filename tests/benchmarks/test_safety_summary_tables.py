"""The README's safety tables (benchmarks/safety_summary_tables.py), each stack read by the rule."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from safety_summary_tables import render

from tests.benchmarks.summary_cells import SFT, cell


def test_the_tables_mark_the_shipped_arm_and_name_the_passing_cells():
    result = {
        "regimes": {"weak-long": {}},
        "cells": [SFT, cell("vaccine-rho2"), cell("lisa", fa_gap=-18.0)],
    }
    text = render(result)
    assert "| weak-long | SFT (shipped) | sampled |" in text
    assert "| weak-long | lisa | sampled |" in text and "| fails |" in text
    assert text.endswith("Cells that pass the rule: weak-long vaccine-rho2 sampled.")


def test_a_stack_measured_at_another_p_gets_its_own_table_read_by_the_same_rule():
    def at(made: dict, p: float) -> dict:
        return made | {"attack": {"p": p}}

    result = {
        "regimes": {"weak-long": {}},
        "cells": [SFT, cell("lisa", fa_gap=-5.0), at(SFT, 0.2), at(cell("lisa"), 0.2)],
    }
    text = render(result)
    p01, p02 = text.index("Every other stack at p = 0.1"), text.index("The stacks measured at p = 0.2")
    assert p01 < p02 and text.count("| weak-long | lisa | sampled |") == 2
    assert text.endswith("Cells that pass the rule: weak-long lisa sampled at p = 0.2.")
