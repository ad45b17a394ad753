"""Chat with a ready base or a tenant's released fine-tuned model, in the API's process: models are loaded
on first use and kept in a small least-recently-used cache, and one answer is generated at a time (a CPU
has no room for two). On a GPU deployment an existing multi-LoRA engine serves better (README)."""

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaccine_core.formats import Message

if TYPE_CHECKING:  # the models need torch: loaded on the first chat request, not when the API starts
    from vaccine_core.inference import LoadedModel


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


class ChatModels:
    """Loaded models by id, the least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.lock = threading.Lock()  # one load or one generation at a time

    def complete(
        self,
        model_id: str,
        spec: Path,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        stop: list[str],
    ) -> Completion:
        """The whole answer (what ``stream`` ends with)."""
        pieces = self.stream(
            model_id,
            spec,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        return next(piece for piece in pieces if isinstance(piece, Completion))

    def stream(
        self,
        model_id: str,
        spec: Path,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        stop: list[str],
    ) -> Iterator[str | Completion]:
        """The answer's text as it is generated, then its ``Completion``. A stop sequence ends the answer
        where it begins; text that could be the start of one is held back until it cannot."""
        from vaccine_core.fast_generation import Sampling
        from vaccine_core.generation import stream_answer

        with self.lock:  # released when the stream ends or its reader goes away
            loaded = self._get(model_id, spec)
            sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed) if temperature > 0 else None
            pieces = stream_answer(
                loaded.model, loaded.tokenizer, messages, max_new_tokens=max_tokens, sampling=sampling
            )
            text, emitted, stopped = "", 0, False
            for piece in pieces:
                text = (text + piece).lstrip()
                cuts = [text.find(sequence) for sequence in stop if sequence and sequence in text]
                if cuts:
                    text, stopped = text[: min(cuts)], True
                    break
                safe = len(text) - held_back(text, stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            text = text.rstrip()
            if len(text) > emitted:
                yield text[emitted:]
            tokenizer = loaded.tokenizer
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            prompt_tokens = len(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
            answer_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        # an answer that used every token it was allowed did not end its turn by itself
        finish = "length" if not stopped and answer_tokens >= max_tokens else "stop"
        yield Completion(text, finish, prompt_tokens, answer_tokens)

    def _get(self, model_id: str, spec: Path) -> "LoadedModel":
        from vaccine_core.inference import load_for_inference

        if model_id in self.loaded:
            self.loaded.move_to_end(model_id)
            return self.loaded[model_id]
        loaded = load_for_inference(spec)
        self.loaded[model_id] = loaded
        while len(self.loaded) > self.capacity:
            self.loaded.popitem(last=False)
        return loaded


def held_back(text: str, stop: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop sequence."""
    return max(
        (k for sequence in stop for k in range(1, len(sequence)) if text.endswith(sequence[:k])), default=0
    )
