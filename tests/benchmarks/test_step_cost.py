"""The step-cost benchmark pools its rounds by the median step and amortises tau=100 over one refresh."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from step_cost import pooled, ratios_to_sft


def measured(name: str, steps: list[float], peak: float) -> dict:
    return {"name": name, "dtype": "torch.bfloat16", "seconds_per_step": sum(steps) / len(steps),
            "step_seconds": steps, "cpu_seconds_per_step": 0.1, "peak_mib": peak}  # fmt: skip


def test_rounds_pool_to_the_median_step_and_the_highest_peak():
    run = pooled([measured("sft", [0.2, 0.2, 5.0], 100.0), measured("sft", [0.3, 0.2], 120.0)])
    assert run["seconds_per_step"] == 0.2  # one hiccup of 5 s moves the mean, not the median
    assert run["mean_seconds_per_step"] == pytest.approx(5.9 / 5)
    assert run["round_seconds_per_step"] == pytest.approx([1.8, 0.25])
    assert run["peak_mib"] == 120.0


def test_tau_100_is_one_refresh_and_99_reuse_steps_against_sft():
    runs = {
        "sft": {"seconds_per_step": 1.0, "peak_mib": 100.0},
        "vaccine_tau1": {"seconds_per_step": 2.0, "peak_mib": 101.0},
        "vaccine_tau100": {"seconds_per_step": 1.0, "peak_mib": 100.5},
    }
    ratios = ratios_to_sft(runs)
    assert ratios["vaccine_tau1_time"] == 2.0
    assert ratios["vaccine_tau100_reuse_step_time"] == 1.0
    assert ratios["vaccine_tau100_amortised_time"] == pytest.approx(1.01)
    assert ratios["vaccine_tau1_memory"] == pytest.approx(1.01)
