"""benchmarks/first_start.py on the tiny model: a real `vaccine serve` timed until its bases are ready."""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import first_start

from tests.service_helpers import free_port, small_safety_evaluation


def test_a_first_start_is_timed_for_the_shipped_base_and_for_vaccine(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch, capsys
):
    small_safety_evaluation(monkeypatch, tmp_path)
    for name, value in {
        "HOME": str(tmp_path / "real-home"),  # where the judge and model caches would be reused from
        "DATA_DIR": str(tiny_data_dir),
        "DEFAULT_BASE_SOURCE": str(tiny_model_dir),
        "DEFAULT_ALIGNMENT_PAIRS": "8",
        "DEFAULT_ALIGNMENT_EPOCHS": "1",
        "PRESCREEN_JUDGE": "refusal",
    }.items():
        monkeypatch.setenv(f"VACCINE_{name}", value)
    monkeypatch.setattr(first_start, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(first_start, "POLL_SECONDS", 0.5)

    argv = ["--also", "vaccine", "--port", str(free_port()), "--name", "tiny", "--keep-home"]
    out = first_start.main(argv)

    result = json.loads(out.read_text())
    assert out.name == "first_start-tiny.json" and result["api_answered_seconds"] < 60
    sft, vaccine = result["bases"]["smollm2-135m-sft"], result["bases"]["smollm2-135m-vaccine"]
    assert (sft["alignment"]["method"], vaccine["alignment"]["method"]) == ("sft", "vaccine")
    for base in (sft, vaccine):
        assert base["status"] == "ready" and base["steps"] >= 1 and base["train_seconds"] > 0
        assert base["seconds_to_ready"] > 0 and "greedy" in base["report"]
    # the home it made is kept on request, its aligned bases in it (for a later read of the shipped base)
    kept = Path(capsys.readouterr().out.split("kept ", 1)[1].split(":", 1)[0])
    try:
        assert (kept / "bases" / "smollm2-135m-sft" / "manifest.json").is_file()
    finally:
        shutil.rmtree(kept)
