"""Dropout whose masks take 16 random bits an element: the judge's training option ``bit_dropout``.

Torch's CPU dropout draws each mask element as a Bernoulli sample from its Mersenne Twister, two 32-bit
draws an element; on 2 CPU cores those draws are a quarter to a third of a judge training step (the
attention probabilities' masks most of it: ``benchmarks/judge_step_cost.py``). Here one 64-bit draw makes
four elements' masks: an element is kept when its 16 bits, read as a signed integer, are at least
``round(p * 65536) - 32768``, so it is dropped with probability ``round(p * 65536) / 65536`` (0.1 ->
0.1000061) and the kept ones are scaled by ``1 / (1 - p)`` as torch's are. The same distribution of
masks, drawn from the same seeded generator, but other masks than torch's: a judge trained so is another
sample of the recipe, not the same weights.

Inside ``vaccine_core.unpadded.replayed`` (a batch run as runs of similar length) every mask is the whole
padded batch's, at the run's rows.
"""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from vaccine_core import unpadded

ATTENTION = "eager_bit_dropout"  # the encoder's attention implementation under this option
LEVELS = 1 << 16


def bit_dropout(inputs: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout(inputs, p, training)`` with masks from 16 bits an element."""
    if not training or p == 0:
        return inputs
    if p >= 1:
        return inputs * 0
    replay = unpadded.current_replay()
    if replay is None:
        kept = kept_mask(inputs.shape, p, inputs.device)
    else:
        kept = replay.mask(inputs.shape, lambda whole: kept_mask(whole, p, inputs.device))
    # scaled as torch scales: in the input's precision, per element
    return (inputs * kept.to(inputs.dtype)).mul_(1 / (1 - p))


def kept_mask(shape: Sequence[int], p: float, device: torch.device) -> torch.Tensor:
    """Which elements of a tensor of ``shape`` dropout keeps: each with probability 1 - p (p to 16 bits)."""
    count = int(torch.Size(shape).numel())
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # every 64-bit pattern alike (from 0 the top bit would stay clear)
    bits = words.view(torch.int16)[:count].view(shape)
    return bits >= round(p * LEVELS) - LEVELS // 2


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
    return unpadded.swap_dropout(model, BitDropout)
