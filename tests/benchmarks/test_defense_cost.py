"""benchmarks/defense_cost.py on the tiny model: plain LoRA and a layer fine-tuned in turn from one run's
data and settings, every time kept and the medians' ratios written."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import defense_cost

from tests.helpers import tiny_attack_run


def test_each_repeat_times_plain_lora_and_the_layer(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    base, run = tiny_attack_run(tiny_model_dir, alpaca_file, tmp_path)
    monkeypatch.setattr(defense_cost, "RESULTS", tmp_path)

    argv = ["--run", str(run), "--base", str(base), "--layers", "token_constraint", "resta", "--repeats", "2"]
    assert defense_cost.main([*argv, "--resta-scale", "0.25", "--name", "tiny"]) == 0

    result = json.loads((tmp_path / "defense_cost-tiny.json").read_text())
    assert [len(result["times"][v]) for v in ("plain", "token_constraint", "resta")] == [2, 2, 2]
    assert result["times"]["plain"][0]["layer_seconds"] == 0
    # each job ran its own layer and no other; RESTA, an edit of the saved adapter, at the scale given
    assert [result["times"][v][0]["layers"] for v in ("plain", "token_constraint", "resta")] == [
        [],
        ["token_constraint"],
        ["resta"],
    ]
    assert result["resta_scale"] == 0.25 and result["ratios"]["resta"]["job"] > 0
    assert all(t["layer_seconds"] > 0 for t in result["times"]["token_constraint"])
    medians = result["medians"]
    assert result["ratios"]["token_constraint"]["job"] == round(
        medians["token_constraint"]["job_seconds"] / medians["plain"]["job_seconds"], 3
    )
    assert result["training"]["batch_size"] == 4 and result["command"].startswith("python benchmarks/")
