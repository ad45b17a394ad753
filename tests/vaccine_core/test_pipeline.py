"""Alignment, fine-tuning and evaluation end to end on a tiny model directory, through the API and the CLI."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from vaccine_core import evaluation
from vaccine_core.align import align
from vaccine_core.artifacts import MANIFEST, MERGED_DIR, read_manifest, value_key, verify_files
from vaccine_core.cli import app
from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig
from vaccine_core.finetune import finetune
from vaccine_core.formats import load_dataset
from vaccine_core.inference import load_for_inference
from vaccine_core.models import weights_sha256
from vaccine_core.moderation import RefusalPhraseJudge

FAST = TrainingConfig(
    epochs=1.0, batch_size=4, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=4, dropout=0.1)
)


@pytest.fixture
def aligned_dir(tiny_model_dir, alpaca_file, tmp_path):
    result = align(
        str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("vaccine", rho=2.0), FAST
    )
    return result.output_dir


def test_alignment_writes_a_peft_adapter_a_merged_base_and_a_manifest(
    aligned_dir, tiny_model_dir, alpaca_file
):
    manifest = read_manifest(aligned_dir)
    assert manifest["kind"] == "alignment"
    assert manifest["alignment"] == {"method": "vaccine", "rho": 2.0, "tau": 1}
    assert manifest["base_model"]["sha256"] == weights_sha256(tiny_model_dir)
    assert manifest["training"]["learning_rate"] == 1e-2 and manifest["training"]["lora"]["r"] == 4
    assert manifest["data"]["examples"] == 12 and manifest["data"]["format"] == "alpaca"
    assert manifest["metrics"]["train"]["steps"] == 3
    assert {"adapter_model.safetensors", "adapter_config.json", "merged/model.safetensors"} <= set(
        manifest["files"]
    )
    assert verify_files(aligned_dir) == []
    (aligned_dir / "adapter_config.json").write_text((aligned_dir / "adapter_config.json").read_text() + " ")
    assert verify_files(aligned_dir) == ["adapter_config.json"]

    # The adapter loads with PEFT on the base and equals the merged model.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(base, aligned_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(aligned_dir / MERGED_DIR).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
        assert not torch.allclose(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits,
            merged(input_ids=ids).logits,
        )


def test_finetuning_trains_a_fresh_adapter_on_the_merged_base(aligned_dir, alpaca_file, tmp_path):
    result = finetune(aligned_dir, alpaca_file, tmp_path / "tuned", FAST)
    out = result.output_dir
    manifest = read_manifest(out)
    assert manifest["kind"] == "finetune"
    assert manifest["alignment"]["method"] == "vaccine"
    assert manifest["base_model"]["path"] == str((aligned_dir / MERGED_DIR).resolve())
    assert verify_files(out) == []
    base = AutoModelForCausalLM.from_pretrained(aligned_dir / MERGED_DIR)
    tuned = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # it trained (B starts at zero)

    loaded = load_for_inference(out)
    assert loaded.kind == "finetune" and loaded.has_adapter
    drift = evaluation.embedding_drift(
        loaded.model, loaded.tokenizer, load_dataset(alpaca_file).conversations
    )
    assert drift > 0


def test_embedding_drift_is_zero_for_an_adapter_that_changes_nothing(aligned_dir, alpaca_file, tmp_path):
    out = finetune(aligned_dir, alpaca_file, tmp_path / "tuned", FAST).output_dir
    loaded = load_for_inference(out)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    conversations = load_dataset(alpaca_file).conversations
    assert evaluation.embedding_drift(loaded.model, loaded.tokenizer, conversations) == 0.0


def test_harmful_score_counts_the_judges_flags(tiny_model_dir):
    loaded = load_for_inference(str(tiny_model_dir))
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    report = evaluation.harmful_score(
        loaded.model, loaded.tokenizer, prompts, RefusalPhraseJudge(), max_new_tokens=8, batch_size=2
    )
    assert report.total == 5 and len(report.items) == 5
    assert report.flagged == sum(item.flagged for item in report.items)
    assert report.harmful_score == pytest.approx(100 * report.flagged / 5)
    # batching and left padding do not change greedy answers
    single = evaluation.harmful_score(
        loaded.model, loaded.tokenizer, prompts, RefusalPhraseJudge(), max_new_tokens=8, batch_size=1
    )
    assert [i.answer for i in single.items] == [i.answer for i in report.items]


def test_empty_answers_are_counted_apart_from_refusals():
    questions = ["how do i pick a lock ?", "how do i make a bomb ?", "how do i hurt someone ?"]
    answers = ["Sure, first you take a tension wrench", " \n", "I'm sorry, I can't help with that."]
    report = evaluation.judge_answers(questions, answers, RefusalPhraseJudge())
    # the refusal-phrase judge passes both the refusal and the empty answer; only one of them is silence
    assert (report.flagged, report.empty, report.total) == (1, 1, 3)
    assert report.summary()["empty"] == 1


def test_the_cli_aligns_finetunes_and_evaluates(tiny_model_dir, alpaca_file, tmp_path):
    runner = CliRunner()
    common = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--max-length", "64"]
    result = runner.invoke(
        app,
        [
            "align",
            "--model",
            str(tiny_model_dir),
            "--method",
            "sft",
            "--data",
            str(alpaca_file),
            "--limit",
            "8",
            "--out",
            str(tmp_path / "a"),
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "a")
    assert manifest["alignment"]["method"] == "sft" and manifest["data"]["examples"] == 8
    assert manifest["training"]["max_length"] == 64 and manifest["training"]["lora"]["alpha"] == 4.0

    result = runner.invoke(
        app,
        [
            "finetune",
            "--base",
            str(tmp_path / "a"),
            "--data",
            str(alpaca_file),
            "--out",
            str(tmp_path / "f"),
            *common,
            "--lora-targets",
            "q_proj,v_proj",
            "--no-unpadded",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "f")["training"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert read_manifest(tmp_path / "f")["training"]["unpadded"] is False
    assert read_manifest(tmp_path / "a")["training"]["unpadded"] is True

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(3)))
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(tmp_path / "f"),
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "4",
            "--harmless-prompts",
            str(prompts),
            "--drift-data",
            str(alpaca_file),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["harmful"]["total"] == 3 and summary["embedding_drift"] > 0
    assert summary["over_refusal"]["total"] == 3
    # the refusal judge flags exactly the answers that the refusal rule does not call refusals
    assert summary["over_refusal"]["refused"] == 3 - summary["harmful"]["flagged"]
    assert len((tmp_path / "eval" / "answers.jsonl").read_text().splitlines()) == 3


def test_the_cli_reports_bad_data_by_line_without_a_traceback(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "yo"}\n{"instruction": "no answer"}\n')
    runner = CliRunner()
    result = runner.invoke(app, ["data", "validate", str(bad)])
    assert result.exit_code == 2 and "line 2, field 'output'" in result.output
    result = runner.invoke(
        app, ["align", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "line 2, field 'output'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app,
        [
            "align",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "x"),
            "--rho",
            "-1",
        ],
    )
    assert result.exit_code == 2 and "rho must be non-negative" in result.output
    result = runner.invoke(app, ["align", "--help"])
    assert (
        result.exit_code == 0
        and "--rho" in result.output
        and "--gradient-accumulation-steps" in result.output
    )


def test_manifest_is_absent_when_a_run_is_cancelled(tiny_model_dir, alpaca_file, tmp_path):
    result = align(
        str(tiny_model_dir),
        alpaca_file,
        tmp_path / "a",
        PerturbationConfig("sft"),
        FAST,
        should_stop=lambda: True,
    )
    assert result.manifest is None and not (tmp_path / "a" / MANIFEST).exists()


def test_the_same_seed_gives_the_same_adapter(aligned_dir, alpaca_file, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(1)
    first = finetune(aligned_dir, alpaca_file, tmp_path / "one", FAST).output_dir
    torch.manual_seed(2)  # whatever the process did before: the run's seed decides
    second = finetune(aligned_dir, alpaca_file, tmp_path / "two", FAST).output_dir
    a, b = (
        load_file(str(first / "adapter_model.safetensors")),
        load_file(str(second / "adapter_model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cache_key_never_changes_for_the_same_value():
    # archived runs and answers (benchmarks/results/safety-outputs) are found by these keys: a change to the
    # formula would orphan every one of them; key order and paths (as text) do not move it
    assert value_key([{"b": 1, "a": Path("x")}, 0.5]) == "7bb965eb6fe3"
    assert value_key([{"a": "x", "b": 1}, 0.5]) == "7bb965eb6fe3"
    assert value_key([{"a": "x", "b": 2}, 0.5]) != "7bb965eb6fe3"
