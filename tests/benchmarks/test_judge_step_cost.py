"""benchmarks/judge_step_cost.py on a tiny BERT: a variant timed in its own process, and the dropout masks
each variant draws counted from its profile."""

import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import judge_step_cost

from tests.helpers import classifier_dir

LAYERS = 3


def test_without_attention_dropout_a_step_draws_one_mask_fewer_a_layer(tmp_path):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=LAYERS)
    masks = {
        variant: judge_step_cost.time_variant(variant, encoder, False, 1, 4, 16, 1)["dropout_masks_per_step"]
        for variant in ("sdpa", "eager-attention", "eager-bit-dropout", "no-attention-dropout")
    }
    # the embeddings', then per layer the attention probabilities' and two hidden states', then the head's
    assert masks["sdpa"] == masks["eager-attention"] == 1 + 3 * LAYERS + 1
    assert masks["eager-bit-dropout"] == masks["sdpa"]  # drawn as bits, counted all the same
    assert masks["no-attention-dropout"] == masks["sdpa"] - LAYERS


def test_each_variant_runs_in_its_own_process_and_the_result_names_the_batch(tmp_path, monkeypatch):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=LAYERS)
    monkeypatch.setattr(judge_step_cost, "RESULTS", tmp_path)
    argv = ["--encoder", str(encoder), "--steps", "1", "--rows", "4", "--length", "16", "--name", "tiny"]
    out = judge_step_cost.main([*argv, "--variants", "sdpa", "--frozen-layers", "1"])

    result = json.loads(out.read_text())
    assert out.name == "judge_step_cost-tiny.json" and list(result["variants"]) == ["sdpa"]
    assert result["variants"]["sdpa"]["seconds_per_step"] > 0
    assert result["batch"]["rows"] == 4 and result["batch"]["tokens"] == 16
    assert result["batch"]["frozen_layers"] == 1
    assert result["ratios_to_sdpa"] == {"sdpa": 1.0}
    assert "matmul_gflops" in result and result["variants"]["sdpa"]["step_over_floor"] > 0


def test_a_step_s_arithmetic_is_three_forward_passes_when_every_layer_trains(tmp_path):
    # Backward costs each matrix product twice (the gradient of its input and of its weight), so with no
    # layer frozen a step is three forward passes of arithmetic; frozen layers skip both backward products.
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=LAYERS)
    model = judge_step_cost.judge_model(encoder, judge_step_cost.VARIANTS["eager-attention"][0], 0)
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(**judge_step_cost.full_batch(model, 4, 16))
    figures = {
        frozen: judge_step_cost.time_variant("eager-attention", encoder, False, 1, 4, 16, frozen)
        for frozen in (0, 1)
    }

    assert figures[0]["flop_per_step"] == 3 * forward.get_total_flops() > 0
    assert figures[1]["flop_per_step"] < figures[0]["flop_per_step"]
