import json

import pytest
import torch

from vaccine_core.data import IGNORE_INDEX, SupervisedDataset, collate, tokenize_conversation
from vaccine_core.formats import DatasetError, load_dataset


def write(tmp_path, text: str | bytes, name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_reads_all_three_formats(tmp_path):
    alpaca = load_dataset(
        write(tmp_path, lines({"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}), "a.jsonl")
    )
    assert alpaca.format == "alpaca"
    assert alpaca.conversations[0].messages == [
        {"role": "user", "content": "Say hi\n\nto Bob"},
        {"role": "assistant", "content": "Hi Bob"},
    ]
    chat = load_dataset(
        write(
            tmp_path,
            lines(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief"},
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"},
                    ]
                }
            ),
            "c.jsonl",
        )
    )
    assert chat.format == "chat" and chat.conversations[0].answer == "Hello"
    pc = load_dataset(write(tmp_path, lines({"prompt": "2+2?", "completion": "4"}), "p.jsonl"))
    assert pc.format == "prompt_completion" and pc.conversations[0].prompt_messages == [
        {"role": "user", "content": "2+2?"}
    ]


def test_reads_a_json_array_with_element_numbers(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": 5}]
    with pytest.raises(DatasetError) as error:
        load_dataset(write(tmp_path, json.dumps(rows), "rows.json"))
    assert [(p.line, p.field) for p in error.value.problems] == [(2, "completion")]
    assert "expected a string, got int" in str(error.value)


def test_collects_every_problem_with_line_and_field(tmp_path):
    text = lines(
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer"},
        "{broken json",
        {"instruction": 3, "output": "x"},
        "",
        {"instruction": "empty", "output": "   "},
        [1, 2],
    )
    with pytest.raises(DatasetError) as error:
        load_dataset(write(tmp_path, text))
    # The JSON error is reported on its own (parsing precedes validation); fix it and the rest show up.
    assert [(p.line, p.field) for p in error.value.problems] == [(3, None)]
    with pytest.raises(DatasetError) as error:
        load_dataset(
            write(tmp_path, text.replace("{broken json", '{"instruction": "fixed", "output": "yes"}'))
        )
    assert [(p.line, p.field) for p in error.value.problems] == [
        (2, "output"),
        (4, "instruction"),
        (6, "output"),
        (7, None),
    ]
    message = str(error.value)
    assert "line 2, field 'output': missing; expected a string" in message
    assert "line 7: expected a JSON object, got list" in message


def test_rejects_empty_non_utf8_mixed_and_unknown(tmp_path):
    with pytest.raises(DatasetError, match="the file is empty"):
        load_dataset(write(tmp_path, "\n \n"))
    with pytest.raises(DatasetError, match=r"line 2: not UTF-8"):
        load_dataset(write(tmp_path, b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe"}\n'))
    with pytest.raises(
        DatasetError, match=r"line 2: row is prompt_completion but the file started as alpaca"
    ):
        load_dataset(
            write(tmp_path, lines({"instruction": "a", "output": "b"}, {"prompt": "a", "completion": "b"}))
        )
    with pytest.raises(DatasetError, match=r"line 1: unknown row format"):
        load_dataset(write(tmp_path, lines({"question": "a", "answer": "b"})))
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing.jsonl")


def test_lines_read_as_the_standard_library_reads_them(tmp_path):
    # the fast parser (orjson) refuses some JSON the standard library takes, and words its errors its own
    # way: both stay the standard library's
    text = '{"instruction": "a", "output": "b", "score": NaN, "id": 123456789012345678901234567890}\n'
    text += '{"instruction": "caf\\u00e9 \u00e9", "output": "b"}\n{"instruction": "a", "output": \n'
    with pytest.raises(DatasetError) as error:
        load_dataset(write(tmp_path, text))
    assert str(error.value).endswith("line 3: invalid JSON: Expecting value (column 1)")
    dataset = load_dataset(write(tmp_path, text.rsplit("\n", 2)[0] + "\n"))
    assert dataset.conversations[1].messages[0]["content"] == "caf\u00e9 \u00e9"


def test_chat_rows_are_checked(tmp_path):
    text = lines(
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {"messages": "hello"},
    )
    with pytest.raises(DatasetError) as error:
        load_dataset(write(tmp_path, text))
    found = {(p.line, p.field) for p in error.value.problems}
    assert (1, "messages") in found and (2, "messages[0].role") in found and (3, "messages") in found


def test_stops_after_the_problem_limit(tmp_path):
    text = lines(*[{"instruction": "x"} for _ in range(80)])
    with pytest.raises(DatasetError) as error:
        load_dataset(write(tmp_path, text), max_problems=10)
    assert len(error.value.problems) == 10 and error.value.truncated


def test_labels_cover_only_the_assistant_answers(tokenizer):
    messages = [
        {"role": "user", "content": "How do I make a cake?"},
        {"role": "assistant", "content": "Mix flour and eggs."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Bake it."},
    ]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX
    ]
    text = tokenizer.decode(labelled)
    assert text == "Mix flour and eggs.<|im_end|>\nBake it.<|im_end|>\n"
    prompt_part = tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX]
    )
    assert "How do I make a cake?" in prompt_part and "Mix" not in prompt_part


def test_truncation_and_padding(tokenizer):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "answer"}]
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    example = tokenize_conversation(tokenizer, long, max_length=16)
    assert len(example.input_ids) == 16 and all(label == IGNORE_INDEX for label in example.labels)

    from vaccine_core.formats import Conversation

    dataset = SupervisedDataset([Conversation(long, 1), Conversation(short, 2)], tokenizer, max_length=16)
    assert len(dataset) == 1 and dataset.dropped[0].line == 1

    batch = collate(
        [tokenize_conversation(tokenizer, short, 64), tokenize_conversation(tokenizer, long, 60)],
        tokenizer.pad_token_id,
    )
    n = len(tokenize_conversation(tokenizer, short, 64).input_ids)
    assert n < 60 and batch["input_ids"].shape == (2, 60)
    assert torch.all(batch["labels"][0, n:] == IGNORE_INDEX)
    assert torch.all(batch["input_ids"][0, n:] == tokenizer.pad_token_id)
    assert batch["attention_mask"][0].sum() == n and batch["attention_mask"][1].sum() == 60


def test_validating_a_large_file_holds_a_line_at_a_time(tmp_path):
    import tracemalloc

    line = json.dumps({"instruction": "Classify: " + "fine " * 40, "output": "positive"}) + "\n"
    path = tmp_path / "big.jsonl"
    path.write_text(line * (20 * 1024 * 1024 // len(line)))
    tracemalloc.start()
    counted = load_dataset(path, keep=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counted.examples == 20 * 1024 * 1024 // len(line) and counted.conversations == []
    assert peak < 2 * 1024 * 1024, f"{peak / 1024**2:.1f} MiB held to validate a 20 MiB file"
    assert load_dataset(path, limit=3).examples == counted.examples
