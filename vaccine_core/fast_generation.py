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
                    weight = weight + module.get_delta_weight(name).detach()
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
    """Keys and values for every layer, allocated once for the longest sequence a batch can reach.

    Keys are stored transposed ([batch, heads, head_dim, length]): the product with the query then reads
    them in place, where the usual layout would be copied at every step."""

    def __init__(self, decoder: FastDecoder, batch: int, capacity: int):
        shape = (batch, decoder.kv_heads, capacity, decoder.head_dim)
        transposed = (batch, decoder.kv_heads, decoder.head_dim, capacity)
        self.length = 0  # the columns filled so far
        # zeros, not empty: the pages are touched once here instead of one page fault at a time while
        # decoding
        self.keys = [
            torch.zeros(transposed, dtype=decoder.dtype, device=decoder.device) for _ in decoder.layers
        ]
        self.values = [torch.zeros(shape, dtype=decoder.dtype, device=decoder.device) for _ in decoder.layers]

    def write(
        self, layer: int, rows: slice, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values at ``start``; return everything up to them (keys transposed)."""
        end = start + k.shape[2]
        self.keys[layer][rows, :, :, start:end] = k.transpose(-1, -2)
        self.values[layer][rows, :, start:end] = v
        return self.keys[layer][rows, :, :, :end], self.values[layer][rows, :, :end]

    def share_first_row(self, columns: int) -> None:
        """Copy row 0's first ``columns`` positions to every row (a prompt prefix all rows share)."""
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[1:, :, :, :columns] = keys[:1, :, :, :columns]
            values[1:, :, :columns] = values[:1, :, :columns]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every batch row not in ``rows`` (finished answers), keeping the filled part only."""
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                store[i] = tensor.index_select(0, rows)


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
    chosen = logits.max(dim=-1).indices  # as greedy() does
    for row, (sampling, generator) in enumerate(zip(samplings, generators, strict=True)):
        if sampling is not None:
            chosen[row] = sample_tokens(logits[row : row + 1], sampling, [generator])[0]
    return chosen


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
    """Decoding a step at a time: each step's new (row, token id) pairs, for the rows still answering (a
    row's end-of-turn token and what follows left out). The caller sets the grad mode (a generator may be
    resumed from another thread, where its own would not hold).

    Rows of unrelated requests may share the batch (service/inference.py): ``row_sampling`` decodes each
    row its own way (overriding ``sampling``; each sampled row's stream seeded from its own seed and row
    key, as alone), ``budgets`` ends each row after its own number of tokens (at most
    ``max_new_tokens``), and the rows ``dropped()`` names stop at the next step (nobody reads them)."""
    batch = len(prompts)
    device = decoder.device
    # Chat templates open every prompt alike (SmolLM2's with a 20-token system prompt): that prefix is
    # computed once and copied to every row. The rest of each prompt is left-padded after it, so that
    # every prompt ends at the same column.
    shared = shared_prefix_length(prompts)
    tails = [p[shared:] for p in prompts]
    width = max(len(t) for t in tails)
    longest = shared + width
    tokens = torch.full((batch, width), pad_id, dtype=torch.long)
    real = torch.zeros(batch, longest, dtype=torch.bool)
    real[:, :shared] = True
    for row, tail in enumerate(tails):
        tokens[row, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        real[row, longest - len(tail) :] = True
    positions = real.long().cumsum(-1) - 1
    capacity = longest + max_new_tokens
    cache = KVCache(decoder, batch, capacity)
    if shared:
        prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long)
        causal = torch.ones(shared, shared, dtype=torch.bool).tril()
        decoder.forward(
            prefix.to(device),
            positions[:1, :shared].to(device),
            cache,
            0,
            causal[None, None].to(device),
            slice(0, 1),
        )
        cache.share_first_row(shared)
    # who may attend to whom: real tokens only, causally; a padding position sees itself, so that no row
    # of the softmax is empty
    causal = torch.ones(width, longest, dtype=torch.bool).tril(diagonal=shared)
    own = torch.zeros(width, longest, dtype=torch.bool)
    own[:, shared:] = torch.eye(width, dtype=torch.bool)
    prompt_mask = (causal & real[:, None, :]) | own
    last = torch.empty(batch, decoder.hidden, dtype=decoder.dtype, device=device)
    for first in range(0, batch, PREFILL_ROWS):  # small chunks keep the activations in reused memory
        chunk = slice(first, min(first + PREFILL_ROWS, batch))
        last[chunk] = decoder.forward(
            tokens[chunk].to(device),
            positions[chunk, shared:].to(device),
            cache,
            shared,
            prompt_mask[chunk, None].to(device),
            chunk,
        )
    cache.length = longest
    valid = torch.zeros(batch, capacity, dtype=torch.bool)
    valid[:, :longest] = real
    keys = row_keys or [(i, 0) for i in range(batch)]
    if row_sampling is not None:
        generators = [
            _row_generators(s, [key])[0] if s else None for s, key in zip(row_sampling, keys, strict=True)
        ]
        samplings = list(row_sampling)
    else:
        generators = _row_generators(sampling, keys) if sampling else []
    end = torch.tensor(list(end_ids), dtype=torch.long)
    budget = torch.tensor(list(budgets) if budgets is not None else [max_new_tokens] * batch)

    next_position = positions[:, -1] + 1
    rows = torch.arange(batch)  # which prompt each row of the shrinking batch answers
    alive = torch.ones(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        if row_sampling is not None:
            chosen = choose_tokens(decoder, last, samplings, generators)
        elif sampling:
            chosen = sample_tokens(decoder.logits(last).cpu(), sampling, generators)
        else:
            chosen = decoder.greedy(last).cpu()
        alive &= ~torch.isin(chosen, end)
        if dropped is not None:
            alive &= ~torch.isin(rows, torch.tensor(sorted(dropped()), dtype=torch.long))
        yield list(zip(rows[alive].tolist(), chosen[alive].tolist(), strict=True))
        alive &= budget[rows] > step + 1
        if step == max_new_tokens - 1 or not bool(alive.any()):
            break
        # Finished rows ride along (their tokens are ignored) until enough of them are worth a copy of
        # the cache without them.
        if int((~alive).sum()) >= max(1, len(rows) // COMPACT_EVERY):
            keep = alive.nonzero().squeeze(1)
            rows, chosen, next_position, valid = rows[keep], chosen[keep], next_position[keep], valid[keep]
            alive = alive[keep]
            if row_sampling is not None:
                samplings = [samplings[i] for i in keep.tolist()]
            if sampling or row_sampling is not None:
                generators = [generators[i] for i in keep.tolist()]
            cache.keep(keep.to(device))
        column = cache.length
        valid[:, column] = True
        last = decoder.forward(
            chosen[:, None].to(device),
            next_position[:, None].to(device),
            cache,
            column,
            valid[:, : column + 1].to(device),
        )
        cache.length += 1
        next_position = next_position + 1


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
