"""Chat with a ready base or a tenant's released fine-tuned model, in the API's process. A base is loaded
once and shared: every fine-tuned model on it is a LoRA adapter loaded beside the others on that one copy
(PEFT's named adapters), the least recently used dropped beyond ``adapters``, and a chat with the base
itself runs with the adapters switched off. Bases beyond ``bases`` are dropped the same way. One answer
is generated at a time (a CPU has no room for two). On a GPU deployment an existing multi-LoRA engine
serves better (README)."""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vaccine_core.formats import Message

if TYPE_CHECKING:  # the models need torch: loaded on the first chat request, not when the API starts
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class SharedBase:
    """A loaded base and the adapters loaded on it, by model id (least recently used first)."""

    model: "PreTrainedModel | PeftModel"
    tokenizer: "PreTrainedTokenizerBase"
    adapters: OrderedDict[str, str]  # model id -> PEFT adapter name


def adapter_name(model_id: str) -> str:
    """A PEFT adapter name for a model id (ids hold ':' and whatever a suffix held; names are keys of
    module dicts)."""
    return "m" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


class ChatModels:
    """Loaded bases by model path, each with its adapters; the least recently used dropped beyond the
    capacities."""

    def __init__(self, bases: int = 2, adapters: int = 8):
        self.capacity, self.adapter_capacity = bases, adapters
        self.bases: OrderedDict[str, SharedBase] = OrderedDict()
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

        with self.lock, self._selected(model_id, spec) as loaded:  # until the stream ends or its reader goes
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

    @contextmanager
    def _selected(self, model_id: str, spec: Path) -> Iterator[SharedBase]:
        """The shared base of ``spec`` with ``model_id``'s adapter active, or with every adapter off when
        ``spec`` is a base itself."""
        from peft import PeftModel

        from vaccine_core.artifacts import read_manifest
        from vaccine_core.inference import resolve_base

        manifest = read_manifest(spec) if spec.is_dir() else None
        if manifest is not None and manifest.get("kind") == "finetune":
            shared = self._base(Path(manifest["base_model"]["path"]))
            shared.model = self._with_adapter(shared, model_id, spec)
            shared.model.set_adapter(shared.adapters[model_id])
            yield shared
            return
        shared = self._base(resolve_base(spec).model_path)
        if isinstance(shared.model, PeftModel):
            with shared.model.disable_adapter():
                yield shared
        else:
            yield shared

    def _base(self, model_path: Path) -> SharedBase:
        from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device

        key = str(Path(model_path).resolve())
        if key in self.bases:
            self.bases.move_to_end(key)
            return self.bases[key]
        model = load_causal_lm(model_path, pick_device(None))
        model.eval()
        self.bases[key] = SharedBase(model, load_tokenizer(model_path), OrderedDict())
        while len(self.bases) > self.capacity:
            self.bases.popitem(last=False)
        return self.bases[key]

    def _with_adapter(self, shared: SharedBase, model_id: str, adapter_dir: Path) -> "PeftModel":
        """The shared model with ``model_id``'s adapter loaded (the least recently used one dropped)."""
        from peft import PeftModel

        if model_id in shared.adapters:
            shared.adapters.move_to_end(model_id)
            return shared.model
        name = adapter_name(model_id)
        if isinstance(shared.model, PeftModel):
            shared.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            shared.model = PeftModel.from_pretrained(shared.model, str(adapter_dir), adapter_name=name)
        shared.model.eval()
        shared.adapters[model_id] = name
        while len(shared.adapters) > self.adapter_capacity:
            _dropped, oldest = shared.adapters.popitem(last=False)
            shared.model.delete_adapter(oldest)
        return shared.model


def held_back(text: str, stop: list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop sequence."""
    return max(
        (k for sequence in stop for k in range(1, len(sequence)) if text.endswith(sequence[:k])), default=0
    )
