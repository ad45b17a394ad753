"""What a training-time defense plugs into the training loop, and the data stream it draws from.

A defense sees every optimizer step twice: before it, to choose the batch the step trains on (Lisa trains
some steps on safety pairs instead of the user's rows), and after the step's backward pass, to add its own
gradient to what the loss gave (Lisa's proximal term, Booster's attenuation term). Its state travels in
checkpoints, so a resumed run reaches the same weights.
"""

from typing import Any, Protocol

import torch

from vaccine_core.data import SupervisedDataset, collate

Batch = dict[str, torch.Tensor]


class StepDefense(Protocol):
    name: str
    setup_seconds: float  # wall seconds it took to prepare before the first step (a run's cost counts them)

    def batch(self, step: int, batch: Batch) -> Batch:
        """The batch optimizer step ``step`` (1-based) trains on, given the user's next batch."""
        ...

    def after_backward(self, step: int) -> None:
        """Add the defense's gradient to ``.grad`` (the loss's gradient is there already)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchStream:
    """An endless, seeded stream of batches of a side dataset; its position is its state (for resume)."""

    def __init__(self, dataset: SupervisedDataset, batch_size: int, pad_token_id: int, seed: int):
        if len(dataset) == 0:
            raise ValueError("a defense's data set holds no examples")
        self.dataset, self.batch_size, self.pad_token_id, self.seed = dataset, batch_size, pad_token_id, seed
        self.drawn = 0

    def next(self, device: torch.device) -> Batch:
        chosen = batch_indices(len(self.dataset), self.batch_size, self.seed, self.drawn)
        self.drawn += 1
        batch = collate([self.dataset[i] for i in chosen], self.pad_token_id)
        return {k: v.to(device) for k, v in batch.items()}


def batch_indices(size: int, batch_size: int, seed: int, drawn: int) -> list[int]:
    """The indices of a side stream's batch number ``drawn``: each epoch a fresh permutation, seeded by
    ``seed`` and the epoch, so a stream's position alone restores it."""
    per_epoch = -(-size // batch_size)
    epoch, position = divmod(drawn, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
