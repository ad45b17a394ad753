"""Dropout whose masks take 16 random bits an element: the judge's training option ``bit_dropout``.

Torch's CPU dropout draws each mask element as a Bernoulli sample from its Mersenne Twister, two 32-bit
draws an element; on 2 CPU cores those draws are a quarter to a third of a judge training step (the
attention probabilities' masks most of it: ``benchmarks/judge_step_cost.py``). Here one 64-bit draw makes
four elements' masks: an element is kept when its 16 bits, read as a signed integer, are at least
``round(p * 65536) - 32768``, so it is dropped with probability ``round(p * 65536) / 65536`` (0.1 ->
0.1000061) and the kept ones are scaled by ``1 / (1 - p)`` as torch's are. The same distribution of
masks, drawn from the same seeded generator, but other masks than torch's: a judge trained so is another
sample of the recipe, not the same weights.

``replayed`` serves a batch run as runs of similar length (``moderation.unpadded``) the masks that the
whole padded batch would have drawn: each dropout site's mask is drawn for the whole batch when the first
run reaches it, in the order the whole batch would draw them, and every run takes its rows of it.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

ATTENTION = "eager_bit_dropout"  # the encoder's attention implementation under this option
LEVELS = 1 << 16


def bit_dropout(inputs: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout(inputs, p, training)`` with masks from 16 bits an element."""
    if not training or p == 0:
        return inputs
    if p >= 1:
        return inputs * 0
    replay = _replay.get()
    if replay is None:
        kept = kept_mask(inputs.shape, p, inputs.device)
    else:
        kept = replay.kept(inputs.shape, p, inputs.device)
    # scaled as torch scales: in the input's precision, per element
    return (inputs * kept.to(inputs.dtype)).mul_(1 / (1 - p))


def kept_mask(shape: Sequence[int], p: float, device: torch.device) -> torch.Tensor:
    """Which elements of a tensor of ``shape`` dropout keeps: each with probability 1 - p (p to 16 bits)."""
    count = int(torch.Size(shape).numel())
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # every 64-bit pattern alike (from 0 the top bit would stay clear)
    bits = words.view(torch.int16)[:count].view(shape)
    return bits >= round(p * LEVELS) - LEVELS // 2


class MaskReplay:
    """The masks of one padded batch of ``batch_size`` rows and ``length`` tokens, handed out a run of its
    rows at a time. The encoder's dropout sites have the shapes (rows, hidden) for the head, (rows, tokens,
    hidden) for hidden states and (rows, heads, tokens, tokens) for attention probabilities; a run's masks
    are the whole batch's at its rows, cut to its own padded length (what is cut off is padding)."""

    def __init__(self, batch_size: int, length: int):
        self.batch_size, self.length = batch_size, length
        self.masks: list[torch.Tensor] = []  # the whole batch's, one a dropout site, in the order drawn
        self.site = 0
        self.rows, self.run_length = list(range(batch_size)), length
        self.whole = True  # the run is the batch as drawn: its masks as they are

    @contextmanager
    def run(self, rows: Sequence[int], length: int) -> Iterator[None]:
        """Serve the masks of the whole batch's ``rows``, padded to ``length`` tokens, for one pass."""
        self.rows, self.run_length, self.site = list(rows), length, 0
        self.whole = self.rows == list(range(self.batch_size)) and length == self.length
        yield

    def kept(self, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
        """The next site's mask for this run, drawn for the whole batch if no run reached the site yet."""
        whole, run = self.shapes(shape)
        if tuple(shape) != run:
            raise ValueError(f"no dropout site of the encoder has shape {tuple(shape)} in a run of {run}")
        if self.site == len(self.masks):  # the first run to reach this site: the whole batch's draw
            self.masks.append(kept_mask(whole, p, device))
        mask = self.masks[self.site]
        self.site += 1
        if self.whole:
            return mask
        mask, cut = mask[self.rows], self.run_length
        if len(shape) == 3:
            return mask[:, :cut]
        return mask[:, :, :cut, :cut] if len(shape) == 4 else mask

    def shapes(self, shape: torch.Size) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The site's mask shape for the whole batch and for this run, from the site's shape."""
        rows, tokens, cut, last = self.batch_size, self.length, self.run_length, shape[-1]
        if len(shape) == 2:
            return (rows, last), (len(self.rows), last)
        if len(shape) == 3:
            return (rows, tokens, last), (len(self.rows), cut, last)
        if len(shape) == 4:
            return (rows, shape[1], tokens, tokens), (len(self.rows), shape[1], cut, cut)
        raise ValueError(f"no dropout site of the encoder has {len(shape)} dimensions")


_replay: ContextVar[MaskReplay | None] = ContextVar("bit_dropout_replay", default=None)


@contextmanager
def replayed(batch_size: int, length: int) -> Iterator[MaskReplay]:
    """Within it every ``bit_dropout`` takes its mask from one padded batch's (``MaskReplay``)."""
    replay = MaskReplay(batch_size, length)
    token = _replay.set(replay)
    try:
        yield replay
    finally:
        _replay.reset(token)


class BitDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with ``bit_dropout``."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return bit_dropout(inputs, self.p, self.training)


def eager_attention_bit_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (BERT's ``eager_attention_forward``), its dropout on the attention
    probabilities drawn with ``bit_dropout``."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = bit_dropout(nn.functional.softmax(weights, dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, eager_attention_bit_dropout)
# without a mask function of its own transformers builds no padding mask for an attention it does not know
AttentionMaskInterface.register(ATTENTION, eager_mask)


def use_bit_dropout(model: nn.Module) -> nn.Module:
    """Every ``nn.Dropout`` of ``model`` drawing its masks with ``bit_dropout``, in place (the attention
    probabilities' too when the model was loaded with ``attn_implementation=ATTENTION``)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, BitDropout(child.p, child.inplace))
    return model
