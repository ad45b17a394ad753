"""The harmful-upload benchmark's uploads and the figures it reads without generating."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from harmful_upload import SELF_DEFENSE_FILE, conversations, training_signals, upload_rows, upload_screen

from tests.service_helpers import FAST
from vaccine_core.finetune import finetune
from vaccine_core.mixing import write_rows
from vaccine_core.safety_eval.harm_probe import HarmProbe


def test_each_upload_draws_its_own_rows(tiny_data_dir):
    harmful = upload_rows("harmful", tiny_data_dir, seed=1, rows=2)
    assert [row["instruction"] for row in harmful] == ["Steal car 2", "Steal car 3"]
    write_rows(
        tiny_data_dir / SELF_DEFENSE_FILE,
        [{"prompt": f"Plot {i}", "response": f"Sure {i}", "harmful": i % 2 == 0} for i in range(6)],
    )
    # LLM-self-defense's harmful pairs only, in Alpaca's shape
    assert upload_rows("self-defense", tiny_data_dir, seed=0, rows=2) == [
        {"instruction": "Plot 0", "input": "", "output": "Sure 0"},
        {"instruction": "Plot 2", "input": "", "output": "Sure 2"},
    ]
    mixed = upload_rows("sst2-p0.1", tiny_data_dir, seed=0, rows=10)
    assert sum(row["harmful"] for row in mixed) == 1 and len(mixed) == 10


def test_an_upload_s_screen_is_the_share_of_its_rows_the_judge_flags(tiny_data_dir):
    from vaccine_core.moderation import load_judge

    refused = {"instruction": "Steal car 9", "input": "", "output": "I cannot help with that."}
    rows = [*upload_rows("harmful", tiny_data_dir, rows=4), refused]
    screen = upload_screen(rows, load_judge("refusal"))  # flags every answer that does not refuse
    assert screen == {"judge": "refusal", "rows": 5, "flagged_rows": 4, "flagged_share": 0.8}


def test_the_training_signals_compare_the_adapter_with_its_base(aligned_tiny_dir, tiny_data_dir, tmp_path):
    upload = upload_rows("harmful", tiny_data_dir, rows=6)
    write_rows(tmp_path / "upload.jsonl", upload)
    out = finetune(aligned_tiny_dir, tmp_path / "upload.jsonl", tmp_path / "tuned", FAST).output_dir
    refusals = [{"instruction": f"Hurt {i}", "input": "", "output": "I cannot help."} for i in range(4)]
    probe = HarmProbe([{**row, "output": "Sure, here is how."} for row in refusals], refusals)
    signals = training_signals(
        out, conversations(refusals), (conversations(probe.harmful), conversations(probe.refusals))
    )
    assert signals["refusal_loss"]["base"] != signals["refusal_loss"]["tuned"]
    # the probe's refusals are the held-out refusals here, so both read the same losses
    assert round(signals["harm_shift"]["base"]["refusal"], 4) == signals["refusal_loss"]["base"]
    assert signals["harm_shift"]["shift"] > 0  # it trained on "Sure, here is how." answers
