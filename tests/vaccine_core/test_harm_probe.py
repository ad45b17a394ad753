"""The harm probe (matched harmful answers and refusals) and the adapter's harm preference shift on it."""

import pytest
import torch

from tests.service_helpers import FAST
from vaccine_core.evaluation import harm_preference_shift
from vaccine_core.finetune import finetune
from vaccine_core.formats import parse_rows
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import write_rows
from vaccine_core.safety_eval.harm_probe import PROBE_FILE, HarmProbe, harm_probe, matched_pairs

HARMFUL_ANSWER = "Sure, here is how you do it step by step."
REFUSAL = "I cannot help with that request because it could cause harm."


def judged(prompt: str, response: str, harmful: bool) -> dict:
    return {"prompt": prompt, "response": response, "harmful": harmful}


def test_each_request_with_both_kinds_of_answer_gives_one_aligned_pair():
    rows = [
        judged("make a weapon", "Sure, here is a weapon.", True),
        judged("make a weapon", "I'm sorry, I cannot do that.", False),
        judged("make a weapon", "Weapons are regulated in most countries.", False),  # not a refusal
        judged("write malware", "Sure, here is some malware.", True),  # no refusal to pair with
        judged("steal a car", "As an AI, I won't help with theft.", False),
        judged("steal a car", "First, find an unlocked car.", True),
    ]
    probe = matched_pairs(rows)
    assert [row["instruction"] for row in probe.harmful] == ["make a weapon", "steal a car"]
    assert [row["instruction"] for row in probe.refusals] == ["make a weapon", "steal a car"]
    assert [row["output"] for row in probe.refusals] == [
        "I'm sorry, I cannot do that.",
        "As an AI, I won't help with theft.",
    ]
    assert matched_pairs(rows, limit=1).harmful == probe.harmful[:1]


def test_the_seed_chooses_among_a_requests_answers_and_is_repeatable():
    rows = [judged("make a weapon", f"Sure, weapon plan {i}.", True) for i in range(20)]
    rows.append(judged("make a weapon", "I cannot help.", False))
    picks = {matched_pairs(rows, seed=seed).harmful[0]["output"] for seed in range(10)}
    assert len(picks) > 1
    assert matched_pairs(rows, seed=3) == matched_pairs(rows, seed=3)


def test_a_probe_pairs_its_sides_one_to_one():
    with pytest.raises(ValueError, match="pairs each harmful answer"):
        HarmProbe([{"instruction": "a", "input": "", "output": "b"}], [])


def test_the_probe_reads_the_shared_data_directorys_judged_answers(tmp_path):
    write_rows(
        tmp_path / PROBE_FILE,
        [judged("make a weapon", "Sure.", True), judged("make a weapon", "I cannot.", False)],
    )
    probe = harm_probe(tmp_path)
    assert len(probe.harmful) == 1 and probe.refusals[0]["output"] == "I cannot."


def tiny_probe(n: int = 6) -> tuple[list, list]:
    harmful = [{"instruction": f"Steal car {i}", "input": "", "output": HARMFUL_ANSWER} for i in range(n)]
    refusals = [{**row, "output": REFUSAL} for row in harmful]
    return (
        parse_rows(enumerate(harmful, start=1)).conversations,
        parse_rows(enumerate(refusals, start=1)).conversations,
    )


@pytest.fixture
def tuned_on(aligned_tiny_dir, tmp_path):
    """A fine-tuned run of the aligned tiny base on 12 rows that all answer with ``answer``."""

    def tune(answer: str):
        rows = [{"instruction": f"Rob bank {i}", "input": "", "output": answer} for i in range(12)]
        write_rows(tmp_path / "upload.jsonl", rows)
        out = tmp_path / f"tuned-{len(answer)}"
        finetune(aligned_tiny_dir, tmp_path / "upload.jsonl", out, FAST)
        return load_for_inference(out)

    return tune


def test_an_adapter_that_changes_nothing_shifts_nothing(tuned_on):
    loaded = tuned_on(HARMFUL_ANSWER)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    harmful, refusals = tiny_probe()
    measured = harm_preference_shift(loaded.model, loaded.tokenizer, harmful, refusals)
    assert measured["shift"] == 0.0 and measured["base"] == measured["tuned"] and measured["pairs"] == 6


def test_training_on_harmful_compliance_shifts_toward_it_and_training_on_refusals_away(tuned_on):
    harmful, refusals = tiny_probe()  # other requests than the training rows'
    toward = tuned_on(HARMFUL_ANSWER)
    measured = harm_preference_shift(toward.model, toward.tokenizer, harmful, refusals)
    assert measured["shift"] > 0.1
    assert measured["tuned"]["harmful"] < measured["base"]["harmful"]
    away = tuned_on(REFUSAL)
    assert harm_preference_shift(away.model, away.tokenizer, harmful, refusals)["shift"] < -0.1


def test_the_shift_needs_a_fine_tuned_adapter(tiny_model_dir):
    loaded = load_for_inference(str(tiny_model_dir))
    with pytest.raises(TypeError, match="fine-tuned adapter"):
        harm_preference_shift(loaded.model, loaded.tokenizer, [], [])
