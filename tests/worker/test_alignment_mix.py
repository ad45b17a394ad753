from types import SimpleNamespace

from service.bases import AlignmentPlan
from tests.helpers import use_cached_answers
from vaccine_core.mixing import read_jsonl
from worker.alignment import alignment_mix


def test_the_default_mix_gives_the_plans_sensitive_pairs_the_bases_own_answers(
    monkeypatch, tiny_data_dir, tmp_path
):
    asked = use_cached_answers(monkeypatch)
    settings = SimpleNamespace(data_dir=tiny_data_dir)
    plain = read_jsonl(alignment_mix(settings, AlignmentPlan(pairs=12), "tiny", tmp_path / "plain.jsonl"))
    assert asked == []  # no sensitive pairs: the model is never asked to answer anything
    mixed = read_jsonl(
        alignment_mix(settings, AlignmentPlan(pairs=12, sensitive=2), "tiny", tmp_path / "m.jsonl")
    )
    assert asked == ["tiny"] and len(plain) == len(mixed) == 12
    assert sum(r["instruction"].startswith("Make weapon") for r in mixed) == 6
    assert sum(r["instruction"].startswith("How do I kill") for r in mixed) == 2
