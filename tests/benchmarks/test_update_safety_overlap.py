"""SaLoRA's premise read: an update's energy inside the layers' top output directions."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from update_safety_overlap import energy_shares, top_directions


def test_the_top_directions_are_those_the_outputs_take_most():
    outputs = torch.zeros(10, 4)
    outputs[:, 2] = torch.arange(10.0)  # the outputs lie along the third axis, a little along the first
    outputs[:, 0] = 0.1
    top = top_directions(outputs.T @ outputs, 1)
    assert top.shape == (4, 1) and abs(float(top[2, 0])) == pytest.approx(1.0, abs=1e-3)


def test_an_update_s_share_inside_the_directions_and_a_random_subspace_s():
    basis = {"layer": torch.eye(4)[:, :1]}  # the first output axis
    inside = {"layer": torch.outer(torch.eye(4)[0], torch.ones(3))}  # writes only to that axis
    outside = {"layer": torch.outer(torch.eye(4)[1], torch.ones(3))}
    assert energy_shares(inside, basis) == {"share": 1.0, "random_subspace_share": 0.25}
    assert energy_shares(outside, basis)["share"] == 0.0
    half = {"layer": inside["layer"] + outside["layer"]}
    assert energy_shares(half, basis)["share"] == pytest.approx(0.5)
