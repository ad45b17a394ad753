"""Progress bars fed by the training loop's callback."""

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:  # the training loop's module imports torch: a command that trains nothing never loads it
    from vaccine_core.training import Progress


class ProgressBar:
    """A tqdm bar that opens on the first report (when the total is known) and shows loss and speed."""

    def __init__(self, description: str):
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, progress: "Progress") -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=progress.total_steps, initial=progress.step - 1, desc=self.description, unit="step"
            )
        self.bar.set_postfix(
            loss=f"{progress.loss:.4f}",
            lr=f"{progress.learning_rate:.2e}",
            tok_s=f"{progress.tokens_per_second:.0f}",
        )
        self.bar.update(1)
        if progress.step == progress.total_steps:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
