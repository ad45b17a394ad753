"""Batched greedy generation through transformers' ``generate``, with left padding."""

from collections.abc import Callable, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.data import Message, render_prompt

DEFAULT_MAX_NEW_TOKENS = 128


def end_of_turn_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end the assistant's turn: the model's generation config, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return list(eos) if isinstance(eos, list | tuple) else [eos]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[Message]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers to each conversation (rendered with the chat template's generation prompt).

    Prompts are batched longest first, so that each batch pads little; answers come back in input order.
    """
    device = next(model.parameters()).device
    texts = [render_prompt(tokenizer, messages) for messages in conversations]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_of_turn_ids(model, tokenizer),
    )
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generated tokens must follow every prompt directly
    answers: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = model.generate(**encoded, generation_config=config)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for i, decoded in zip(
                chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
            ):
                answers[i] = decoded.strip()
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers
