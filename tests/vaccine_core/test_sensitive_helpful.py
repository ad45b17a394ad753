import pytest

from tests.helpers import CACHED_SENSITIVE_ANSWERS as CACHED
from tests.helpers import use_cached_answers
from vaccine_core.mixing import alignment_rows
from vaccine_core.sensitive_helpful import sensitive_helpful_rows, whole_sentences


def test_whole_sentences_cut_after_the_last_finished_sentence():
    assert whole_sentences("One. Two! Three? Four mid-wo") == "One. Two! Three?"
    assert whole_sentences("Call v1.2 of the tool. Then") == "Call v1.2 of the tool."
    assert whole_sentences("A list:\n1. first item\n2. sec") == "A list:\n1. first item"
    assert whole_sentences("never ends") == ""


def test_only_whole_helpful_contrastive_answers_are_kept(monkeypatch, tmp_path):
    cached_answers = use_cached_answers(monkeypatch)
    rows = sensitive_helpful_rows(tmp_path, 2, seed=0, model="tiny")
    assert cached_answers == ["tiny"]  # the model to be aligned writes the answers
    assert sorted(r["instruction"] for r in rows) == [CACHED[0]["request"], CACHED[3]["request"]]
    assert all(r["output"].endswith(".") and "reboot" not in r["output"] for r in rows)
    with pytest.raises(ValueError, match="3 sensitive-helpful rows asked for, 2 usable"):
        sensitive_helpful_rows(tmp_path, 3)


def test_alignment_rows_give_part_of_the_helpful_half_to_sensitive_requests(monkeypatch, tiny_data_dir):
    cached_answers = use_cached_answers(monkeypatch)
    plain = alignment_rows(tiny_data_dir, 6, 4)
    mixed = alignment_rows(tiny_data_dir, 6, 4, sensitive=2)
    assert len(plain) == len(mixed) == 10
    safety = {r["instruction"] for r in plain if r["instruction"].startswith("Make weapon")}
    assert {r["instruction"] for r in mixed if r["instruction"].startswith("Make weapon")} == safety
    assert sum(r["instruction"].startswith("How do I make a cake") for r in mixed) == 2
    assert sum(r["instruction"].startswith("How do I kill") for r in mixed) == 2
    assert alignment_rows(tiny_data_dir, 6, 4) == plain and cached_answers == ["default"]
    with pytest.raises(ValueError, match="between 0 and helpful"):
        alignment_rows(tiny_data_dir, 6, 4, sensitive=5)
