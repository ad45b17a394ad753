"""A batch run as runs of examples of similar length: the same gradient on fewer padded tokens.

A random batch pads every example to its longest, and every padded token costs the model's full
arithmetic: the judge's batches pad to 1.25x their real tokens over its three epochs, the default base's
alignment batches to 1.66x. Run as runs of examples of similar length, each padded to its own longest, with
the runs' losses summed and divided by the whole batch's counts and their gradients added before the one
optimizer step, the batch still gives the same gradient: nothing in the model mixes examples, padding is
masked out (right padding: a causal model's real tokens never see it), and the loss is the batch's.

Its dropout masks stay the same too. Inside ``replayed`` every dropout site draws its mask for the whole
padded batch when the first run reaches it, in the order the whole batch would draw them, and each run
takes its rows of it, cut to its own length (what is cut off is padding): the judge's bit masks
(``moderation.bit_dropout``) and torch's own masks for the LoRA adapters' dropout (``ReplayedDropout``,
the same draw as ``nn.Dropout``'s). So the recipe is unchanged, up to the float rounding of products of
other shapes.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

# What one more pass through the encoder costs beside its tokens, counted in tokens (its kernel launches and
# Python, forward and backward). On 2 AMD Zen 3 cores, 12 of the judge's steps took 0.809x the whole
# batches' time at 20, 0.835x at 40, 0.928x at 80 and 0.946x at 0 (a pass for every length):
# benchmarks/judge_unpadded.py, results/judge_unpadded-cpu-2cores-amd-zen3.json.
RUN_COST = 20


def length_runs(lengths: Sequence[int], run_cost: int = RUN_COST) -> list[list[int]]:
    """The positions of ``lengths`` (one batch's examples) in runs of similar length, shortest first: of the
    ways to cut the examples, sorted by length, into runs each padded to its own longest, the one that pads
    the fewest tokens, each run counted as ``run_cost`` tokens more."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cheapest = [0] + [float("inf")] * len(order)  # cheapest[end]: the best cut of the shortest ``end``
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        for start in range(end):
            cost = cheapest[start] + (end - start) * longest + run_cost
            if cost < cheapest[end]:
                cheapest[end], start_of[end] = cost, start
    runs, end = [], len(order)
    while end:
        runs.append(order[start_of[end] : end])
        end = start_of[end]
    return runs[::-1]


class MaskReplay:
    """The dropout masks of one padded batch of ``batch_size`` rows and ``length`` tokens, handed out a run
    of its rows at a time. Dropout sites have the shapes (rows, features), (rows, tokens, features) or
    (rows, heads, tokens, tokens); a run's masks are the whole batch's at its rows, cut to its own length."""

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

    def mask(self, shape: torch.Size, draw: Callable[[tuple[int, ...]], torch.Tensor]) -> torch.Tensor:
        """The next site's mask for this run; ``draw`` makes one of a given shape for the whole batch, called
        when no run reached the site yet."""
        whole, run = self.shapes(shape)
        if tuple(shape) != run:
            raise ValueError(f"no dropout site has shape {tuple(shape)} in a run of {run}")
        if self.site == len(self.masks):  # the first run to reach this site: the whole batch's draw
            self.masks.append(draw(whole))
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
        raise ValueError(f"no dropout site has {len(shape)} dimensions")


_replay: ContextVar[MaskReplay | None] = ContextVar("dropout_replay", default=None)


def current_replay() -> MaskReplay | None:
    return _replay.get()


@contextmanager
def replayed(batch_size: int, length: int) -> Iterator[MaskReplay]:
    """Within it every replaying dropout takes its mask from one padded batch's (``MaskReplay``)."""
    replay = MaskReplay(batch_size, length)
    token = _replay.set(replay)
    try:
        yield replay
    finally:
        _replay.reset(token)


class ReplayedDropout(nn.Dropout):
    """``nn.Dropout`` that inside ``replayed`` takes its share of the mask torch draws for the whole batch:
    on the CPU ``nn.Dropout`` multiplies by ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, drawn here for
    the whole batch's shape, so a run's output is the whole batch's at its rows. Outside, it is
    ``nn.Dropout``."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        replay = current_replay()
        if replay is None or not self.training or not 0 < self.p < 1:
            return super().forward(inputs)
        keep = 1 - self.p

        def draw(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.empty(shape, dtype=inputs.dtype, device=inputs.device).bernoulli_(keep).div_(keep)

        return inputs * replay.mask(inputs.shape, draw)


def swap_dropout(model: nn.Module, kind: type[nn.Dropout]) -> nn.Module:
    """Every plain ``nn.Dropout`` of ``model`` a ``kind`` of the same rate, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, kind(child.p, child.inplace))
    return model


def use_replaying_dropout(model: nn.Module) -> nn.Module:
    """Every ``nn.Dropout`` of ``model`` a ``ReplayedDropout``, in place (the same module outside
    ``replayed``)."""
    return swap_dropout(model, ReplayedDropout)
