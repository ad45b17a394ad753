"""The fast decoder gives the answers transformers' generate gives, and samples reproducibly."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from vaccine_core.fast_generation import Sampling, sample_tokens, shared_prefix_length
from vaccine_core.generation import generate, generate_samples

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in (
        "How do I make a cake?",
        "Analyze the sentiment",
        "a charming and often affecting journey",
        "The quick brown fox jumps over the lazy dog 0 1 2 3",
        "Sure",
        "I cannot help with that request because it could cause harm.",
        "step by step",
        "flour, sugar and eggs, then bake. #### 42",
    )
]


def with_lora(model):
    """The model with a LoRA adapter whose update is far from zero (B is zero at initialisation)."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    return peft_model.eval()


def tiny_qwen2(vocab_size: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("adapter", [False, True])
def test_fast_greedy_answers_equal_transformers_generate(tiny_model, tokenizer, adapter):
    model = with_lora(tiny_model) if adapter else tiny_model
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=24, engine="plain")
    fast = generate(model, tokenizer, PROMPTS, max_new_tokens=24, engine="fast")
    assert fast == plain
    assert len({len(a) for a in plain}) > 1  # answers of several lengths: rows leave the batch early
    # and the batch size changes nothing (rows leave at other steps, prompts share other prefixes)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=24, engine="fast", batch_size=3) == plain


def test_the_fast_decoder_runs_a_bf16_model_whose_adapter_peft_keeps_in_float32(tiny_model, tokenizer):
    """Training loads the base in bf16 on a card that has it, and PEFT keeps the adapter in float32: the
    merged weights take the base's dtype (a float32 weight beside bf16 activations fails the product)."""
    from vaccine_core.fast_generation import FastDecoder

    model = with_lora(tiny_model.to(torch.bfloat16))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    decoder = FastDecoder(model)
    assert {w.dtype for layer in decoder.layers for w, _ in layer.qkv} == {torch.bfloat16}
    fast = generate(model, tokenizer, PROMPTS, max_new_tokens=12, engine="fast")
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=12, engine="plain")
    assert sum(f == p for f, p in zip(fast, plain, strict=True)) >= len(PROMPTS) // 2  # bf16 near ties


def test_many_prompts_through_a_few_rows_give_the_same_answers(tiny_model, tokenizer):
    prompts = [[{"role": "user", "content": f"{p[0]['content']} {i}"}] for i in range(3) for p in PROMPTS]
    plain = generate(tiny_model, tokenizer, prompts, max_new_tokens=24, engine="plain")
    assert generate(tiny_model, tokenizer, prompts, max_new_tokens=24, engine="fast", batch_size=2) == plain


def test_fast_decoder_leaves_the_adapter_unmerged(tiny_model, tokenizer):
    model = with_lora(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, engine="fast")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with model.disable_adapter():  # the aligned base is still reachable, as embedding drift needs
        plain_base = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8, engine="plain")
        assert generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8, engine="fast") == plain_base


def test_fast_greedy_on_qwen2_with_attention_bias(tokenizer):
    model = tiny_qwen2(len(tokenizer))
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=16, engine="plain")
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=16, engine="fast") == plain


def test_unsupported_models_use_the_plain_engine(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128)
    config.pad_token_id, config.eos_token_id = 0, 2
    model = GPT2LMHeadModel(config).eval()
    answers = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4)  # auto: falls back, no error
    assert len(answers) == 2
    with pytest.raises(ValueError, match="does not support"):
        generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, engine="fast")


def test_sampling_is_seeded_per_answer_not_per_batch(tiny_model, tokenizer):
    sampling = Sampling(temperature=1.0, top_p=0.95, seed=3)
    first = generate_samples(tiny_model, tokenizer, PROMPTS, max_new_tokens=12, sampling=sampling, samples=2)
    again = generate_samples(
        tiny_model, tokenizer, PROMPTS, max_new_tokens=12, sampling=sampling, samples=2, batch_size=5
    )
    assert first == again
    assert all(len(answers) == 2 for answers in first)
    other = generate_samples(
        tiny_model, tokenizer, PROMPTS, max_new_tokens=12, sampling=Sampling(1.0, 0.95, seed=4), samples=2
    )
    assert other != first
    assert any(a != b for a, b in first)  # two samples of one prompt are two draws


def test_a_nucleus_of_one_token_is_greedy(tiny_model, tokenizer):
    greedy = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=12)
    narrow = generate_samples(tiny_model, tokenizer, PROMPTS, max_new_tokens=12, sampling=Sampling(0.7, 1e-9))
    assert [a[0] for a in narrow] == greedy


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    generators = [torch.Generator().manual_seed(0)]
    draws = [int(sample_tokens(logits, Sampling(1.0, 0.75), generators)[0]) for _ in range(2000)]
    # 0.5 + 0.3 reaches 0.75: tokens 1 and 3 only, in proportion 5 : 3
    assert set(draws) == {1, 3}
    assert draws.count(1) / len(draws) == pytest.approx(0.625, abs=0.04)
    # top_p = 1 keeps every token
    draws = {int(sample_tokens(logits, Sampling(1.0, 1.0), generators)[0]) for _ in range(2000)}
    assert draws == {0, 1, 2, 3}


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0


def test_rows_of_one_batch_keep_their_own_decoding_budget_and_reader(tiny_model, tokenizer):
    from vaccine_core.fast_generation import FastDecoder, decode_batch, decode_steps
    from vaccine_core.generation import prompt_token_ids

    prompts = prompt_token_ids(tokenizer, PROMPTS[:3])
    # no end-of-turn id: only a budget or a reader who left stops a row
    decoding = {"max_new_tokens": 10, "end_ids": [-1], "pad_id": tokenizer.pad_token_id}
    sampled = Sampling(temperature=1.0, top_p=0.9, seed=5)
    rows: dict[int, list[int]] = {0: [], 1: [], 2: []}
    gone: set[int] = set()
    steps = decode_steps(
        FastDecoder(tiny_model), prompts, row_sampling=[None, sampled, None], row_keys=[(0, 0)] * 3,
        budgets=[10, 10, 4], dropped=lambda: gone, **decoding,
    )  # fmt: skip
    with torch.no_grad():
        for number, step in enumerate(steps):
            for row, token in step:
                rows[row].append(token)
            if number == 1:
                gone.add(0)  # row 0's reader left after two tokens
    assert [len(rows[row]) for row in (0, 1, 2)] == [2, 10, 4]
    # each row as if alone: greedy rows decode greedily, the sampled row draws from its own seeded stream
    for row, sampling in ((0, None), (1, sampled), (2, None)):
        (alone,) = decode_batch(FastDecoder(tiny_model), [prompts[row]], sampling=sampling, **decoding)
        assert alone[: len(rows[row])] == rows[row]


def test_a_step_hands_out_its_tokens_before_the_forward_that_reads_them(tiny_model, tokenizer, monkeypatch):
    """A chat's first token comes straight from the prompt's prefill, each later one after one forward;
    rows all dropped between steps end with no forward run for them, whether a row joins first or not."""
    from vaccine_core.fast_generation import FastDecoder, RunningBatch
    from vaccine_core.generation import prompt_token_ids

    decoder = FastDecoder(tiny_model)
    forwards = []
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: forwards.append(1) or forward(*a, **k))
    batch = RunningBatch(decoder, end_ids=[-1], pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        first, second = batch.join(prompt_token_ids(tokenizer, PROMPTS[:2]), budgets=[5, 5])
        forwards.clear()
        assert [row for row, _ in batch.step()] == [first, second] and not forwards
        assert len(batch.step()) == 2 and len(forwards) == 1
        batch.drop([first, second])  # and one joins before the next step: it starts a fresh batch
        (third,) = batch.join(prompt_token_ids(tokenizer, PROMPTS[2:3]), budgets=[5])
        assert [row for row, _ in batch.step()] == [third] and sorted(batch.ended) == [first, second]
        batch.drop([third])
        forwards.clear()
        assert batch.step() == [] and not forwards
    assert batch.ended == [third] and not batch.active


def test_rows_that_join_a_running_batch_answer_as_if_alone(tiny_model, tokenizer):
    """Continuous batching: a row that joins between steps (a prompt longer than the columns filled, so
    every row moves right; later a short one) decodes exactly as alone, and finished rows leave."""
    from vaccine_core.fast_generation import FastDecoder, RunningBatch, decode_batch
    from vaccine_core.generation import prompt_token_ids

    long_prompt, short_prompt, other = prompt_token_ids(tokenizer, [PROMPTS[5], PROMPTS[4], PROMPTS[0]])
    decoding = {"end_ids": [-1], "pad_id": tokenizer.pad_token_id}  # only budgets end rows here
    sampled = Sampling(temperature=1.0, top_p=0.9, seed=5)
    batch = RunningBatch(FastDecoder(tiny_model), **decoding)
    rows: dict[int, list[int]] = {}
    plan = {0: [(short_prompt[:4], 9, None)], 2: [(long_prompt, 12, sampled)], 6: [(other, 5, None)]}
    asked: dict[int, tuple[list[int], int, Sampling | None]] = {}
    widths = []
    with torch.no_grad():
        for step in range(40):
            for prompt, budget, sampling in plan.get(step, []):
                (row,) = batch.join([prompt], budgets=[budget], samplings=[sampling])
                asked[row], rows[row] = (prompt, budget, sampling), []
            if not batch.active:
                break
            for row, token in batch.step():
                rows[row].append(token)
            widths.append(len(batch.ids))
    assert set(rows) == {0, 1, 2} and not batch.active
    assert 2 in widths and 1 in widths[widths.index(2) :]  # rows overlapped, and finished ones left
    for row, (prompt, budget, sampling) in asked.items():
        (alone,) = decode_batch(
            FastDecoder(tiny_model), [prompt], max_new_tokens=budget, sampling=sampling, **decoding
        )
        assert rows[row] == alone, row
