"""The secret-dependence read: one adapter served with its secret first, then run without it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import secret_dependence

from tests.benchmarks.test_safety_grid import PROMPTS
from tests.conftest import SAFETY_ROWS
from tests.service_helpers import FAST
from vaccine_core.data import render_prompt
from vaccine_core.defenses import BackdoorAlignConfig
from vaccine_core.defenses.backdoor_align import backdoor_rows, write_secret
from vaccine_core.finetune import finetune
from vaccine_core.mixing import write_rows
from vaccine_core.moderation import RefusalPhraseJudge
from vaccine_core.safety_eval import ProtocolConfig

SMALL = ProtocolConfig(harmful_prompts=3, harmless_prompts=2, borderline_prompts=0, max_new_tokens=4)


@pytest.fixture
def tuned(aligned_tiny_dir, tmp_path) -> Path:
    data = tmp_path / "rows.jsonl"
    rows = backdoor_rows(SAFETY_ROWS[:4], SAFETY_ROWS[4:6], "SECRET")
    write_rows(data, rows)
    return finetune(aligned_tiny_dir, data, tmp_path / "tuned", FAST).output_dir


def test_the_adapter_answers_behind_its_secret_then_without_it(tuned, monkeypatch):
    write_secret(tuned, "SECRET", BackdoorAlignConfig())
    rendered = []
    generate = secret_dependence.generate_answers

    def recording(model, tokenizer, prompts, config):
        rendered.append(render_prompt(tokenizer, [{"role": "user", "content": "x"}]))
        return generate(model, tokenizer, prompts, config)

    monkeypatch.setattr(secret_dependence, "generate_answers", recording)
    measured = secret_dependence.readings(tuned, RefusalPhraseJudge(), PROMPTS, SMALL)
    assert rendered[0].startswith("<|im_start|>system\nSECRET") and "SECRET" not in rendered[1]
    assert set(measured) == {"served", "without_secret"}
    for decodings in measured.values():
        assert set(decodings) == {"greedy", "sampled"}
        assert all(0 <= figures["hs"] <= 100 for figures in decodings.values())


def test_an_adapter_without_a_secret_is_refused(tuned):
    with pytest.raises(SystemExit, match="not trained with BackdoorAlign"):
        secret_dependence.readings(tuned, RefusalPhraseJudge(), PROMPTS, SMALL)
