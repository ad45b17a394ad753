"""Batched decoding for Llama-family models, several times faster than ``model.generate`` on a CPU.

Evaluation generates hundreds of answers per model; on 2 CPU cores transformers' ``generate`` spends most
of a decoding step outside the model's matrix products: a LoRA adapter's extra products, growing the
key/value cache by concatenation, the CPU flash-attention kernel called with one query token, and a copy of
the full-vocabulary logits. This decoder runs the same weights with:

* every LoRA adapter merged into a private copy of the weights (PEFT's own ``get_delta_weight``; the
  model itself is not touched, so ``disable_adapter()`` still reaches the aligned base);
* a key/value cache allocated once, attention for the new token as two small matrix products;
* the output embedding stored transposed and contiguous, and logits only for the last position;
* finished answers dropped from the batch, so a batch of short refusals does not wait for its longest
  answer at full width.

The model's own modules compute what must match it bit for bit where it matters (RMSNorm, rotary
embeddings, activations); tests pin greedy answers identical to ``model.generate`` on tiny models of each
supported family. Anything else (another architecture, a sliding window in reach) falls back to the plain
path in ``vaccine_core.generation``.

Sampling (``Sampling``) is temperature then nucleus (top-p) sampling, with one random stream per answer
seeded from (seed, prompt index, sample index): an answer does not depend on which batch it fell in.
"""

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
# Sampling looks for the nucleus among this many most likely tokens first, and sorts the whole vocabulary
# only for the rows whose nucleus is wider (exactly the same result, far cheaper).
NUCLEUS_CANDIDATES = 256
# Finished answers leave the batch once they are this share (1/n) of it: copying the cache costs more than
# a few wasted rows.
COMPACT_EVERY = 8
# Prompts are read this many rows at a time.
PREFILL_ROWS = 16


@dataclass(frozen=True)
class Sampling:
    """Temperature then nucleus sampling; every answer draws from its own seeded random stream."""

    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")


def unwrap(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def fast_path_supported(model: PreTrainedModel | PeftModel, longest: int) -> bool:
    """Whether the fast decoder runs this model for sequences up to ``longest`` tokens."""
    config = unwrap(model).config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return False
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return window is None or longest <= window


def effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer's weight and bias with its active LoRA adapters merged in (the module untouched)."""
    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        weight = base.weight.detach()
        if not module.merged and not module.disable_adapters:
            for name in module.active_adapters:
                if name in module.lora_A:
                    # PEFT keeps adapters in float32 beside a bf16 base: the merge takes the base's dtype
                    weight = weight + module.get_delta_weight(name).detach().to(weight.dtype)
        return weight, None if base.bias is None else base.bias.detach()
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


@dataclass
class _Layer:
    input_norm: nn.Module
    post_norm: nn.Module
    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]


def _linear(x: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    return nn.functional.linear(x, *weight_bias)


class FastDecoder:
    """A Llama-family model's weights laid out for batched decoding (see the module's docstring)."""

    def __init__(self, model: PreTrainedModel | PeftModel):
        inner = unwrap(model)
        config = inner.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.act = ACT2FN[config.hidden_act]
        body = inner.model
        self.embed = body.embed_tokens
        self.rotary = body.rotary_emb
        self.final_norm = body.norm
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    input_norm=layer.input_layernorm,
                    post_norm=layer.post_attention_layernorm,
                    qkv=[
                        effective_weight(attn.q_proj),
                        effective_weight(attn.k_proj),
                        effective_weight(attn.v_proj),
                    ],
                    o=effective_weight(attn.o_proj),
                    gate=effective_weight(mlp.gate_proj),
                    up=effective_weight(mlp.up_proj),
                    down=effective_weight(mlp.down_proj),
                )
            )
        head_weight, self.head_bias = effective_weight(inner.lm_head)
        self.head_t = head_weight.t().contiguous()  # [hidden, vocab]: the layout the matrix product wants
        self.vocab, self.hidden = head_weight.shape
        self._logits = torch.empty(0, self.vocab, dtype=head_weight.dtype, device=head_weight.device)
        self.device = head_weight.device
        self.dtype = head_weight.dtype

    # -- one forward pass over new tokens, reading and extending the cache ------------------------------
    def forward(
        self,
        tokens: torch.Tensor,  # [batch, new]
        positions: torch.Tensor,  # [batch, new] rotary positions
        cache: "KVCache",
        start: int,  # the cache column of the first new token
        mask: torch.Tensor,  # [batch, 1, new, start + new] (or [batch, start + 1] for one new token)
        rows: slice = slice(None),  # the cache rows these batch rows are
    ) -> torch.Tensor:
        """The last new token's final hidden state of each row; the new tokens' keys and values enter the
        cache. ``logits`` or ``greedy`` turn it into the next token."""
        batch, new = tokens.shape
        if new == 1:  # one new token: the columns it may not see, once for every layer
            mask = ~mask.view(batch, 1, 1, -1)
        hidden = self.embed(tokens)
        cos, sin = self.rotary(hidden, positions)
        for index, layer in enumerate(self.layers):
            residual = hidden
            hidden = layer.input_norm(hidden)
            q, k, v = (_linear(hidden, wb) for wb in layer.qkv)
            q = q.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys_t, values = cache.write(index, rows, start, k, v)
            if new == 1:
                attended = self._attend_one(q, keys_t, values, mask)
            else:
                attended = nn.functional.scaled_dot_product_attention(
                    q, keys_t.transpose(-1, -2), values, attn_mask=mask, scale=self.scale, enable_gqa=True
                )
            attended = attended.transpose(1, 2).reshape(batch, new, self.heads * self.head_dim)
            hidden = _linear(attended, layer.o).add_(residual)
            residual = hidden
            hidden = layer.post_norm(hidden)
            gated = self.act(_linear(hidden, layer.gate)).mul_(_linear(hidden, layer.up))
            hidden = _linear(gated, layer.down).add_(residual)
        return self.final_norm(hidden[:, -1])

    def logits(self, last: torch.Tensor) -> torch.Tensor:
        """Every token's logit (float32), for sampling."""
        batch = last.shape[0]
        # the logits go to memory reused from step to step: a fresh [batch, vocab] tensor each step costs
        # as much in page faults as the product itself
        if self._logits.shape[0] < batch:
            self._logits = torch.empty(batch, self.vocab, dtype=self.dtype, device=self.device)
        logits = torch.mm(last, self.head_t, out=self._logits[:batch])
        return (logits if self.head_bias is None else logits + self.head_bias).float()

    def greedy(self, last: torch.Tensor) -> torch.Tensor:
        """The most likely next token of each row, the first on a tie (as argmax; ``max`` is 4x faster)."""
        return self.logits(last).max(dim=-1).indices

    def _attend_one(
        self, q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, hidden_columns: torch.Tensor
    ) -> torch.Tensor:
        """Attention of one new token per row over the cache, the query heads grouped by key head."""
        batch = q.shape[0]
        groups = self.heads // self.kv_heads
        grouped = q.view(batch, self.kv_heads, groups, self.head_dim)
        scores = (grouped @ keys_t).mul_(self.scale)  # [batch, kv_heads, groups, length]
        scores.masked_fill_(hidden_columns, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)
        return (weights @ values).view(batch, self.heads, 1, self.head_dim)


class KVCache:
    """Keys and values for every layer, allocated for the longest sequence the batch can reach so far.

    Keys are stored transposed ([batch, heads, head_dim, length]): the product with the query then reads
    them in place, where the usual layout would be copied at every step."""

    def __init__(self, decoder: FastDecoder, batch: int, capacity: int):
        self.length = 0  # the columns filled so far
        self.keys, self.values = self._allocate(decoder, batch, capacity)
        self.capacity = capacity

    @staticmethod
    def _allocate(
        decoder: FastDecoder, batch: int, capacity: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shape = (batch, decoder.kv_heads, capacity, decoder.head_dim)
        transposed = (batch, decoder.kv_heads, decoder.head_dim, capacity)
        # zeros, not empty: the pages are touched once here instead of one page fault at a time while
        # decoding
        keys = [torch.zeros(transposed, dtype=decoder.dtype, device=decoder.device) for _ in decoder.layers]
        values = [torch.zeros(shape, dtype=decoder.dtype, device=decoder.device) for _ in decoder.layers]
        return keys, values

    def write(
        self, layer: int, rows: slice, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values at ``start``; return everything up to them (keys transposed)."""
        end = start + k.shape[2]
        self.keys[layer][rows, :, :, start:end] = k.transpose(-1, -2)
        self.values[layer][rows, :, start:end] = v
        return self.keys[layer][rows, :, :, :end], self.values[layer][rows, :, :end]

    def copy_row(self, source: int, rows: slice, columns: slice) -> None:
        """Copy row ``source``'s ``columns`` to ``rows`` (a prompt prefix those rows share)."""
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[rows, :, :, columns] = keys[source : source + 1, :, :, columns]
            values[rows, :, columns] = values[source : source + 1, :, columns]

    def keep(self, rows: torch.Tensor, first_column: int = 0) -> None:
        """Drop every batch row not in ``rows`` (finished answers), and the columns before
        ``first_column`` (which no remaining row reads)."""
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                kept = tensor.index_select(0, rows)
                store[i] = kept[..., first_column:] if store is self.keys else kept[:, :, first_column:]
        self.length -= first_column
        self.capacity -= first_column

    def grow(self, decoder: FastDecoder, rows: int, shift: int, capacity: int) -> None:
        """Make room for ``rows`` more batch rows and ``capacity`` columns in all, the filled columns moved
        ``shift`` to the right (room for a joining prompt longer than what is filled)."""
        batch = self.keys[0].shape[0]
        keys, values = self._allocate(decoder, batch + rows, capacity)
        for old, new in zip(self.keys, keys, strict=True):
            new[:batch, :, :, shift : shift + self.length] = old[..., : self.length]
        for old, new in zip(self.values, values, strict=True):
            new[:batch, :, shift : shift + self.length] = old[:, :, : self.length]
        self.keys, self.values = keys, values
        self.length += shift
        self.capacity = capacity


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares (each keeps at least one token of its own)."""
    shortest = min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def _row_generators(sampling: Sampling, keys: Sequence[tuple[int, int]]) -> list[torch.Generator]:
    generators = []
    for prompt_index, sample_index in keys:
        seed = (sampling.seed * 1_000_003 + prompt_index) * 1_009 + sample_index
        generators.append(torch.Generator().manual_seed(seed % (2**63)))
    return generators


def sample_tokens(
    logits: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """One token per row: softmax(logits / temperature), restricted to the smallest set of most likely
    tokens whose mass reaches top_p, drawn with each row's own random stream."""
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    top = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    values, indices = probs.topk(top, dim=-1)
    chosen = torch.empty(probs.shape[0], dtype=torch.long)
    for row in range(probs.shape[0]):
        row_values, row_indices = values[row], indices[row]
        if float(row_values.sum()) < sampling.top_p and top < probs.shape[-1]:
            row_values, row_indices = probs[row].sort(descending=True)
        mass_before = row_values.cumsum(0) - row_values
        kept = row_values[mass_before < sampling.top_p]  # always keeps the most likely token
        draw = float(torch.rand((), generator=generators[row])) * float(kept.sum())
        position = min(int(torch.searchsorted(kept.cumsum(0), torch.tensor(draw), right=True)), len(kept) - 1)
        chosen[row] = row_indices[position]
    return chosen


@torch.no_grad()
def decode_batch(
    decoder: FastDecoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    pad_id: int,
    sampling: Sampling | None = None,
    row_keys: Sequence[tuple[int, int]] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (its end-of-turn token and what follows left out)."""
    outputs: list[list[int]] = [[] for _ in prompts]
    steps = decode_steps(
        decoder,
        prompts,
        max_new_tokens=max_new_tokens,
        end_ids=end_ids,
        pad_id=pad_id,
        sampling=sampling,
        row_keys=row_keys,
    )
    for step in steps:
        for row, token in step:
            outputs[row].append(token)
    return outputs


def choose_tokens(
    decoder: FastDecoder,
    last: torch.Tensor,
    samplings: Sequence[Sampling | None],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """One token per row, each row decoded its own way: greedy where its sampling is None, else sampled
    with its own settings from its own random stream."""
    if not any(samplings):
        return decoder.greedy(last).cpu()
    logits = decoder.logits(last).cpu()
    if all(s == samplings[0] for s in samplings):  # one sampling for all (evaluation): drawn at once
        return sample_tokens(logits, samplings[0], generators)  # type: ignore[arg-type]
    chosen = logits.max(dim=-1).indices  # as greedy() does
    for row, (sampling, generator) in enumerate(zip(samplings, generators, strict=True)):
        if sampling is not None:
            chosen[row] = sample_tokens(logits[row : row + 1], sampling, [generator])[0]
    return chosen


class RunningBatch:
    """Rows decoded together a step at a time, each to its own end, which new rows may join between
    steps (continuous batching: a chat that comes while others are answered starts at the next step
    instead of waiting for all of them to finish).

    Every row keeps its prompt in its own cache row, ending at the column where the batch's next token
    goes, so that a step writes every row's new token in one column; a row reads only its own columns.
    A joining prompt longer than the columns filled so far moves every row right; the columns no row
    reads any more are dropped when finished rows are."""

    def __init__(self, decoder: FastDecoder, *, end_ids: Sequence[int], pad_id: int):
        self.decoder, self.pad_id = decoder, pad_id
        self.end = torch.tensor(list(end_ids), dtype=torch.long)
        self.joined = 0  # rows joined so far: the next row's id
        self.ended: list[int] = []  # the rows the last step finished (or drop() stopped before it)
        self.dropped: list[int] = []
        self._empty()

    def _empty(self) -> None:
        decoder = self.decoder
        self.cache: KVCache | None = None
        self.ids = torch.zeros(0, dtype=torch.long)  # each row's id, as join() returned it
        self.valid = torch.zeros(0, 0, dtype=torch.bool)  # [rows, capacity]: the columns each row reads
        self.alive = torch.zeros(0, dtype=torch.bool)
        self.left = torch.zeros(0, dtype=torch.long)  # tokens each row may still produce
        self.next_position = torch.zeros(0, dtype=torch.long)
        self.last = torch.empty(0, decoder.hidden, dtype=decoder.dtype, device=decoder.device)
        self.samplings: list[Sampling | None] = []
        self.generators: list[torch.Generator | None] = []
        # the tokens the last step chose, not yet read into the cache: a step hands its tokens out
        # before the forward that feeds them back, which the next step or join runs first
        self.pending: torch.Tensor | None = None

    @property
    def active(self) -> int:
        """Rows still answering."""
        return int(self.alive.sum())

    def join(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        budgets: Sequence[int],
        samplings: Sequence[Sampling | None] | None = None,
        keys: Sequence[tuple[int, int]] | None = None,
    ) -> list[int]:
        """Add rows (their prompts read now); their first tokens come with the next step. ``budgets``:
        each row's most new tokens; ``samplings``: None for greedy; ``keys``: each sampled row's stream
        key (prompt index, sample index), so that a row draws the same answer in any batch. Returns the
        rows' ids."""
        self.advance()
        count = len(prompts)
        samplings = list(samplings) if samplings is not None else [None] * count
        keys = list(keys) if keys is not None else [(i, 0) for i in range(count)]
        # Chat templates open every prompt alike (SmolLM2's with a 20-token system prompt): that prefix is
        # computed once and copied to every joining row. The rest of each prompt is left-padded after it,
        # so that every prompt ends at the batch's column.
        shared = shared_prefix_length(prompts)
        tails = [p[shared:] for p in prompts]
        width = max(len(t) for t in tails)
        span = shared + width
        first = len(self.ids)  # the joining rows' first cache row
        shift = 0
        if self.cache is None:
            self.cache = KVCache(self.decoder, count, span + max(budgets))
            self.cache.length = span
        else:
            shift = max(0, span - self.cache.length)
            capacity = max(self.cache.capacity + shift, self.cache.length + shift + max(budgets))
            self.cache.grow(self.decoder, count, shift, capacity)
        valid = torch.zeros(first + count, self.cache.capacity, dtype=torch.bool)
        valid[:first, shift : shift + self.valid.shape[1]] = self.valid
        self.valid = valid
        end = self.cache.length
        start = end - span
        last, next_position = self._prefill(prompts, tails, shared, first, start, end)
        self.ids = torch.cat([self.ids, torch.arange(self.joined, self.joined + count)])
        self.joined += count
        self.alive = torch.cat([self.alive, torch.ones(count, dtype=torch.bool)])
        self.left = torch.cat([self.left, torch.tensor(list(budgets), dtype=torch.long)])
        self.next_position = torch.cat([self.next_position, next_position])
        self.last = torch.cat([self.last, last])
        self.samplings += samplings
        self.generators += [
            _row_generators(s, [key])[0] if s else None for s, key in zip(samplings, keys, strict=True)
        ]
        return self.ids[first:].tolist()

    def _prefill(
        self,
        prompts: Sequence[Sequence[int]],
        tails: Sequence[Sequence[int]],
        shared: int,
        first: int,
        start: int,
        end: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read prompts into cache rows ``first``...: the shared prefix at ``start``, each tail ending at
        ``end``. Returns each row's last hidden state and next rotary position."""
        assert self.cache is not None
        device, count, width = self.decoder.device, len(prompts), end - start - shared
        tokens = torch.full((count, width), self.pad_id, dtype=torch.long)
        real = torch.zeros(count, end, dtype=torch.bool)
        real[:, start : start + shared] = True
        for row, tail in enumerate(tails):
            tokens[row, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            real[row, end - len(tail) :] = True
        positions = real.long().cumsum(-1) - 1
        if shared:
            prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long)
            causal = torch.zeros(shared, start + shared, dtype=torch.bool)
            causal[:, start:] = torch.ones(shared, shared, dtype=torch.bool).tril()
            self.decoder.forward(
                prefix.to(device),
                positions[:1, start : start + shared].to(device),
                self.cache,
                start,
                causal[None, None].to(device),
                slice(first, first + 1),
            )
            self.cache.copy_row(first, slice(first + 1, first + count), slice(start, start + shared))
        # who may attend to whom: real tokens only, causally; a padding position sees itself, so that no row
        # of the softmax is empty
        causal = torch.ones(width, end, dtype=torch.bool).tril(diagonal=end - width)
        own = torch.zeros(width, end, dtype=torch.bool)
        own[:, end - width :] = torch.eye(width, dtype=torch.bool)
        prompt_mask = (causal & real[:, None, :]) | own
        last = torch.empty(count, self.decoder.hidden, dtype=self.decoder.dtype, device=device)
        for chunk_start in range(0, count, PREFILL_ROWS):  # small chunks keep activations in reused memory
            chunk = slice(chunk_start, min(chunk_start + PREFILL_ROWS, count))
            last[chunk] = self.decoder.forward(
                tokens[chunk].to(device),
                positions[chunk, end - width :].to(device),
                self.cache,
                end - width,
                prompt_mask[chunk, None].to(device),
                slice(first + chunk.start, first + chunk.stop),
            )
        self.valid[first : first + count, :end] = real
        return last, positions[:, -1] + 1

    def drop(self, ids: Collection[int]) -> None:
        """Stop these rows (nobody reads them): they produce nothing from the next step on."""
        if ids:
            stopped = self.alive & torch.isin(self.ids, torch.tensor(sorted(ids), dtype=torch.long))
            self.dropped += self.ids[stopped].tolist()
            self.alive &= ~stopped

    def step(self) -> list[tuple[int, int]]:
        """One new token for every row still answering: its (id, token) pairs (a row's end-of-turn token
        left out); the rows this step finished are in ``ended``."""
        assert self.cache is not None, "nothing joined"
        self.advance()
        if not bool(self.alive.any()):  # every row was dropped: nothing to choose
            self.ended, self.dropped = self.dropped, []
            self._empty()
            return []
        was_alive = self.alive.clone()
        chosen = choose_tokens(self.decoder, self.last, self.samplings, self.generators)
        self.alive &= ~torch.isin(chosen, self.end)
        produced = list(zip(self.ids[self.alive].tolist(), chosen[self.alive].tolist(), strict=True))
        self.left -= 1
        self.alive &= self.left > 0
        self.ended, self.dropped = self.dropped + self.ids[was_alive & ~self.alive].tolist(), []
        if bool(self.alive.any()):
            self.pending = chosen
        else:  # its memory goes now; a later join starts afresh
            self._empty()
        return produced

    def advance(self) -> None:
        """Read the last step's tokens into the cache: every row's next hidden state (the next step or
        join does it when the caller has not; a caller who hands the step's tokens out first calls it
        after that, before it looks for rows to join)."""
        if self.pending is None:
            return
        if not bool(self.alive.any()):  # every row was dropped: nobody reads what it would compute
            self._empty()
            return
        assert self.cache is not None
        chosen, self.pending = self.pending, None
        # Finished rows ride along (their tokens are ignored) until enough of them are worth a copy of
        # the cache without them.
        if int((~self.alive).sum()) >= max(1, len(self.ids) // COMPACT_EVERY):
            chosen = self._compact(chosen)
        column = self.cache.length
        self.valid[:, column] = True
        self.last = self.decoder.forward(
            chosen[:, None].to(self.decoder.device),
            self.next_position[:, None].to(self.decoder.device),
            self.cache,
            column,
            self.valid[:, : column + 1].to(self.decoder.device),
        )
        self.cache.length += 1
        self.next_position = self.next_position + 1

    def _compact(self, chosen: torch.Tensor) -> torch.Tensor:
        """Drop the finished rows, and the columns before the first one a remaining row reads."""
        assert self.cache is not None
        keep = self.alive.nonzero().squeeze(1)
        first_column = int(self.valid[keep].any(0).int().argmax())
        self.cache.keep(keep.to(self.decoder.device), first_column)
        self.valid = self.valid[keep, first_column:]
        self.ids, self.alive, self.left = self.ids[keep], self.alive[keep], self.left[keep]
        self.next_position, self.last = self.next_position[keep], self.last[keep]
        self.samplings = [self.samplings[i] for i in keep.tolist()]
        self.generators = [self.generators[i] for i in keep.tolist()]
        return chosen[keep]


def decode_steps(
    decoder: FastDecoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    pad_id: int,
    sampling: Sampling | None = None,
    row_keys: Sequence[tuple[int, int]] | None = None,
    row_sampling: Sequence[Sampling | None] | None = None,
    budgets: Sequence[int] | None = None,
    dropped: Callable[[], Collection[int]] | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """Decoding one batch a step at a time: each step's new (row, token id) pairs, for the rows still
    answering (a row's end-of-turn token and what follows left out). The caller sets the grad mode (a
    generator may be resumed from another thread, where its own would not hold).

    ``row_sampling`` decodes each row its own way (overriding ``sampling``; each sampled row's stream
    seeded from its own seed and row key, as alone), ``budgets`` ends each row after its own number of
    tokens (at most ``max_new_tokens``), and the rows ``dropped()`` names stop at the next step."""
    batch = RunningBatch(decoder, end_ids=end_ids, pad_id=pad_id)
    batch.join(
        prompts,
        budgets=[min(b, max_new_tokens) for b in budgets] if budgets else [max_new_tokens] * len(prompts),
        samplings=row_sampling if row_sampling is not None else [sampling] * len(prompts),
        keys=row_keys,
    )
    while batch.active:
        if dropped is not None:
            batch.drop(dropped())
        yield batch.step()


def fast_generate(
    model: PreTrainedModel | PeftModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    end_ids: Sequence[int],
    pad_id: int,
    batch_size: int,
    sampling: Sampling | None = None,
    samples: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:
    """For every prompt, ``samples`` answers as token ids (greedy answers are all alike: use samples=1).

    Prompts are decoded longest first in batches of ``batch_size`` (prompt, sample) rows; ``on_batch``
    hears how many rows each batch finished.
    """
    decoder = FastDecoder(model)
    jobs = sorted(
        ((i, s) for i in range(len(prompt_ids)) for s in range(samples)),
        key=lambda job: -len(prompt_ids[job[0]]),
    )
    answers: list[list[list[int]]] = [[[] for _ in range(samples)] for _ in prompt_ids]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        decoded = decode_batch(
            decoder,
            [prompt_ids[i] for i, _ in chunk],
            max_new_tokens=max_new_tokens,
            end_ids=end_ids,
            pad_id=pad_id,
            sampling=sampling,
            row_keys=chunk,
        )
        for (i, s), ids in zip(chunk, decoded, strict=True):
            answers[i][s] = ids
        if on_batch is not None:
            on_batch(len(chunk))
    return answers


def longest_sequence(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    return max((len(p) for p in prompt_ids), default=0) + max_new_tokens
