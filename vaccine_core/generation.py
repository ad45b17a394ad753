"""Batched answer generation: greedy or sampled, through the fast decoder where it supports the model.

Two engines give the same greedy answers (``benchmarks/generation_speed.py`` measures how often):

* ``fast``: ``vaccine_core.fast_generation`` (Llama-family models; several times faster on a CPU);
* ``plain``: transformers' ``generate`` with left padding, for every other model.

``auto`` picks ``fast`` when the model is supported. Sampling draws ``samples`` answers per prompt with
temperature and nucleus (top-p) sampling, seeded; on the fast engine each answer has its own random stream,
so it does not depend on batching.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.data import render_prompt
from vaccine_core.fast_generation import (
    FastDecoder,
    Sampling,
    decode_steps,
    fast_generate,
    fast_path_supported,
)
from vaccine_core.formats import Message

DEFAULT_MAX_NEW_TOKENS = 128
PLAIN_BATCH_SIZE = 16
# The fast engine's cost per answer keeps falling up to a few hundred rows a batch on 2 CPU cores (a step
# reads every weight once, whatever the batch): 256 rows answered protocol v2's prompts 7 % faster than 128
# (benchmarks/generation_speed.py), for a key/value cache of about 2 GB with SmolLM2-135M at 128 new tokens.
FAST_BATCH_SIZE = 256

Engine = Literal["auto", "fast", "plain"]


def end_of_turn_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end the assistant's turn: the model's generation config, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return list(eos) if isinstance(eos, list | tuple) else [eos]


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[list[Message]]
) -> list[list[int]]:
    """Each conversation rendered with the chat template's generation prompt, as token ids."""
    texts = [render_prompt(tokenizer, messages) for messages in conversations]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def pick_engine(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, engine: Engine
) -> str:
    longest = max((len(p) for p in prompt_ids), default=0) + max_new_tokens
    supported = fast_path_supported(model, longest)
    if engine == "fast" and not supported:
        raise ValueError(f"the fast engine does not support {type(model).__name__} at {longest} tokens")
    return "fast" if engine == "fast" or (engine == "auto" and supported) else "plain"


@torch.no_grad()
def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[Message]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    sampling: Sampling | None = None,
    samples: int = 1,
    batch_size: int | None = None,
    engine: Engine = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """``samples`` answers to each conversation: greedy (``sampling`` None; one answer) or sampled.

    ``on_batch`` hears how many answers each batch finished.
    """
    if sampling is None and samples != 1:
        raise ValueError("greedy decoding gives one answer per prompt: pass sampling to draw several")
    prompt_ids = prompt_token_ids(tokenizer, conversations)
    if not prompt_ids:
        return []
    was_training = model.training
    model.eval()
    try:
        if pick_engine(model, prompt_ids, max_new_tokens, engine) == "fast":
            ids = fast_generate(
                model,
                prompt_ids,
                max_new_tokens=max_new_tokens,
                end_ids=end_of_turn_ids(model, tokenizer),
                pad_id=tokenizer.pad_token_id,
                batch_size=batch_size or FAST_BATCH_SIZE,
                sampling=sampling,
                samples=samples,
                on_batch=on_batch,
            )
            return [
                [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers] for answers in ids
            ]
        return _plain_generate(
            model,
            tokenizer,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            samples=samples,
            batch_size=batch_size or PLAIN_BATCH_SIZE,
            on_batch=on_batch,
        )
    finally:
        model.train(was_training)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[Message]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int | None = None,
    engine: Engine = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy answer to each conversation (rendered with the chat template's generation prompt)."""
    answers = generate_samples(
        model,
        tokenizer,
        conversations,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        engine=engine,
        on_batch=on_batch,
    )
    return [a[0] for a in answers]


def stream_answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    sampling: Sampling | None = None,
) -> Iterator[str]:
    """One answer as it is generated: text pieces whose concatenation, stripped, is the answer
    ``generate_samples`` gives. On the fast engine a piece follows each token (held back while it ends
    inside a multi-byte character); on the plain engine the answer comes whole, at the end."""
    prompt_ids = prompt_token_ids(tokenizer, [messages])
    model.eval()
    if pick_engine(model, prompt_ids, max_new_tokens, "auto") != "fast":
        (answers,) = generate_samples(
            model, tokenizer, [messages], max_new_tokens=max_new_tokens, sampling=sampling, engine="plain"
        )
        yield answers[0]
        return
    steps = decode_steps(
        FastDecoder(model),
        prompt_ids,
        max_new_tokens=max_new_tokens,
        end_ids=end_of_turn_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        sampling=sampling,
    )

    def tokens() -> Iterator[list[int]]:
        while True:
            with torch.no_grad():  # here, not around the loop: each step may run on another thread
                step = next(steps, None)
            if step is None:
                return
            yield [token for _row, token in step]

    yield from text_pieces(tokenizer, tokens())


class PieceDecoder:
    """An answer's text as its tokens come: ``push`` gives what new ids added (nothing while the text
    ends inside a multi-byte character), ``flush`` what is left at the end."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def push(self, new: list[int]) -> str:
        self.ids += new
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) <= len(self.sent) or text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece, self.sent = text[len(self.sent) :], text
        return piece


def text_pieces(tokenizer: PreTrainedTokenizerBase, tokens: Iterable[list[int]]) -> Iterator[str]:
    """An answer's text pieces as its tokens come, a list of new ids at a time (``PieceDecoder``)."""
    decoder = PieceDecoder(tokenizer)
    for new in tokens:
        if piece := decoder.push(new):
            yield piece
    if rest := decoder.flush():
        yield rest


def _plain_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling | None,
    samples: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> list[list[str]]:
    """transformers' ``generate``, prompts batched longest first so that each batch pads little."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    options = (
        {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling
        else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_return_sequences=samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_of_turn_ids(model, tokenizer),
        **options,
    )
    if sampling:
        torch.manual_seed(sampling.seed)  # reproducible for the same prompts and batch size
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generated tokens must follow every prompt directly
    answers: list[list[str]] = [[] for _ in prompt_ids]
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = tokenizer.pad({"input_ids": [prompt_ids[i] for i in chunk]}, return_tensors="pt").to(
                device
            )
            output = model.generate(**encoded, generation_config=config)
            decoded = tokenizer.batch_decode(
                output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for row, text in enumerate(decoded):
                answers[chunk[row // samples]].append(text.strip())
            if on_batch is not None:
                on_batch(len(chunk) * samples)
    finally:
        tokenizer.padding_side = padding_side
    return answers
