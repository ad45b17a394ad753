"""Chat with a ready base or a tenant's released fine-tuned model, in the API's process. A base is loaded
once and shared: every fine-tuned model on it is a LoRA adapter loaded beside the others on that one copy
(PEFT's named adapters), the least recently used dropped beyond ``adapters``, and a chat with the base
itself runs with the adapters switched off. Bases beyond ``bases`` are dropped the same way.

One thread generates for everyone, a step at a time, in one running batch per model (continuous
batching): a request joins at the next step, up to ``batch`` rows, instead of waiting for the others to
finish; each row is greedy or sampled with its own settings and seeded stream, has its own token budget,
and is dropped as soon as its reader stops. While another model's requests wait, no row joins, so the
batch ends and that model gets its turn. A model the fast decoder does not run answers one
request at a time. On a GPU deployment an existing multi-LoRA engine serves better (README)."""

import hashlib
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass
class _Request:
    """One chat waiting for, or being decoded in, a batch."""

    model_id: str
    spec: Path
    messages: list[Message]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    pieces: "queue.Queue[str | BaseException | None]" = field(default_factory=queue.Queue)  # None: done
    gone: threading.Event = field(default_factory=threading.Event)  # its reader stopped
    # set by the generating thread before the first piece
    tokenizer: Any = None
    prompt_tokens: int = 0

    def sampling(self) -> Any:
        from vaccine_core.fast_generation import Sampling

        return Sampling(self.temperature, self.top_p, self.seed) if self.temperature > 0 else None

    def together_with(self, other: "_Request") -> bool:
        return self.model_id == other.model_id and self.spec == other.spec


class ChatModels:
    """Loaded bases by model path, each with its adapters (the least recently used dropped beyond the
    capacities), and the one thread that loads them and generates. ``window_s``: how long the thread
    waits after a request comes for others to join its batch (0: it starts at once; requests that come
    while a batch runs join the next one anyway)."""

    def __init__(self, bases: int = 2, adapters: int = 8, batch: int = 8, window_s: float = 0.0):
        self.capacity, self.adapter_capacity = bases, adapters
        self.batch, self.window_s = batch, window_s
        self.bases: OrderedDict[str, SharedBase] = OrderedDict()
        self.pending: list[_Request] = []
        self.arrived = threading.Condition()
        self.step_rows: Counter[int] = Counter()  # how many decoding steps ran with each number of rows
        self.serving: list[_Request] = []  # the requests the generating thread has taken and not answered
        self.generator: threading.Thread | None = None
        # the last model's decoder (its weights with the adapter merged: building one takes 0.4-2 s for
        # the default model), kept for the next batch on that model
        self.decoder: tuple[tuple[str, str], Any] | None = None

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
        request = _Request(model_id, spec, messages, max_tokens, temperature, top_p, seed)
        self._submit(request)
        text, emitted, stopped = "", 0, False
        try:
            while (piece := request.pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                text = (text + piece).lstrip()
                cuts = [text.find(sequence) for sequence in stop if sequence and sequence in text]
                if cuts:
                    text, stopped = text[: min(cuts)], True
                    break
                safe = len(text) - held_back(text, stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        finally:
            request.gone.set()  # a stop sequence, the end, or a reader who went: its row stops
        text = text.rstrip()
        if len(text) > emitted:
            yield text[emitted:]
        answer_tokens = len(request.tokenizer(text, add_special_tokens=False)["input_ids"])
        # an answer that used every token it was allowed did not end its turn by itself
        finish = "length" if not stopped and answer_tokens >= max_tokens else "stop"
        yield Completion(text, finish, request.prompt_tokens, answer_tokens)

    # -- the generating thread ---------------------------------------------------------------------------
    def _submit(self, request: _Request) -> None:
        with self.arrived:
            self.pending.append(request)
            if self.generator is None:
                self.generator = threading.Thread(target=self._generate_forever, daemon=True)
                self.generator.start()
            self.arrived.notify()

    def _generate_forever(self) -> None:
        while True:
            with self.arrived:
                self.arrived.wait_for(lambda: bool(self.pending))
            if self.window_s:
                time.sleep(self.window_s)
            with self.arrived:
                first = self.pending[0]
            try:
                self._serve(first)
            except Exception as exc:  # every reader it was serving hears it, and the thread goes on
                for request in self.serving or self._admit(first, 1, running=False):
                    request.pieces.put(exc)
            self.serving = []

    def _admit(self, first: _Request, room: int, running: bool) -> list[_Request]:
        """Up to ``room`` waiting requests for ``first``'s model, oldest first; none while a running batch
        should end so that another model's requests get their turn."""
        with self.arrived:
            if running and any(not r.together_with(first) for r in self.pending):
                return []
            taken = [r for r in self.pending if r.together_with(first)][:room]
            self.pending = [r for r in self.pending if r not in taken]
        return taken

    def _serve(self, first: _Request) -> None:
        """Decode ``first``'s model's requests until none waits: on the fast path as one running batch
        that each request joins when it comes (while there is room), else one at a time."""
        import torch

        from vaccine_core.fast_generation import FastDecoder, RunningBatch, fast_path_supported
        from vaccine_core.generation import PieceDecoder, end_of_turn_ids

        # no gradients anywhere in this thread's decoding (the grad mode is the thread's own)
        with self._selected(first.model_id, first.spec) as loaded, torch.no_grad():
            if not fast_path_supported(loaded.model, 0):
                self._serve_plainly(first, loaded)
                return
            key = (first.model_id, str(first.spec))
            if self.decoder is None or self.decoder[0] != key:
                self.decoder = None  # the old one's memory goes before the new one's comes
                self.decoder = (key, FastDecoder(loaded.model))
            batch = RunningBatch(
                self.decoder[1],
                end_ids=end_of_turn_ids(loaded.model, loaded.tokenizer),
                pad_id=loaded.tokenizer.pad_token_id,
            )
            rows: dict[int, tuple[_Request, PieceDecoder]] = {}
            while True:
                joining = []
                for request in self._admit(first, self.batch - batch.active, running=bool(rows)):
                    prompt = self._take(request, loaded)
                    if request.gone.is_set():
                        self._done(request)
                    elif not fast_path_supported(loaded.model, len(prompt) + request.max_tokens):
                        self._answer_plainly(request, loaded)  # beyond a sliding window
                    else:
                        joining.append((request, prompt))
                if joining:
                    ids = batch.join(
                        [prompt for _, prompt in joining],
                        budgets=[r.max_tokens for r, _ in joining],
                        samplings=[r.sampling() for r, _ in joining],
                        keys=[(0, 0)] * len(joining),  # each row's stream as if it were alone
                    )
                    for row, (request, _) in zip(ids, joining, strict=True):
                        rows[row] = (request, PieceDecoder(loaded.tokenizer))
                if not batch.active:
                    return
                batch.drop([row for row, (request, _) in rows.items() if request.gone.is_set()])
                self.step_rows[batch.active] += 1
                for row, token in batch.step():
                    request, text = rows[row]
                    if piece := text.push([token]):
                        request.pieces.put(piece)
                for row in batch.ended:
                    request, text = rows.pop(row)
                    if rest := text.flush():
                        request.pieces.put(rest)
                    self._done(request)
                batch.advance()  # after the tokens went out, and before requests that came meanwhile join

    def _serve_plainly(self, first: _Request, loaded: SharedBase) -> None:
        """A model the fast decoder does not run: its requests one at a time, on the plain path, until
        another model's request waits."""
        served = False
        while request := next(iter(self._admit(first, 1, running=served)), None):
            self._take(request, loaded)
            self._answer_plainly(request, loaded)
            served = True

    def _take(self, request: _Request, loaded: SharedBase) -> list[int]:
        """A request the generating thread now serves: its prompt's token ids (what the model reads)."""
        from vaccine_core.generation import prompt_token_ids

        self.serving.append(request)
        (prompt,) = prompt_token_ids(loaded.tokenizer, [request.messages])
        request.tokenizer, request.prompt_tokens = loaded.tokenizer, len(prompt)
        return prompt

    def _answer_plainly(self, request: _Request, loaded: SharedBase) -> None:
        from vaccine_core.generation import stream_answer

        if not request.gone.is_set():
            for piece in stream_answer(
                loaded.model,
                loaded.tokenizer,
                request.messages,
                max_new_tokens=request.max_tokens,
                sampling=request.sampling(),
            ):
                request.pieces.put(piece)
        self._done(request)

    def _done(self, request: _Request) -> None:
        request.pieces.put(None)
        self.serving.remove(request)

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
