"""Hyperparameters as dataclasses: one for the LoRA adapter, one for the training loop, one for alignment."""

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

AlignmentMethod = Literal["vaccine", "sft", "random"]
ALIGNMENT_METHODS: tuple[str, ...] = ("vaccine", "sft", "random")

# PEFT's shorthand for every linear layer but the output head. On Llama, Qwen2, Mistral and Gemma this is
# exactly the reference's q,k,v,o,gate,up,down list, and it also covers GPT-2 and OPT, whose names differ.
ALL_LINEAR = "all-linear"


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 4.0
    dropout: float = 0.1
    target_modules: list[str] | str = ALL_LINEAR

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainingConfig:
    """The loop's hyperparameters; alignment and fine-tuning share them and differ only in defaults."""

    epochs: float = 1.0
    batch_size: int = 5
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    max_length: int = 256
    max_grad_norm: float | None = 1.0
    seed: int = 42
    checkpoint_every: int | None = None
    # SFT and Vaccine steps on the CPU with no step defense run each batch as runs of examples of similar
    # length: the same gradient and dropout masks on fewer padded tokens (vaccine_core.unpadded).
    unpadded: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("batch_size and gradient_accumulation_steps must be at least 1")
        if self.epochs <= 0 and not self.max_steps:
            raise ValueError("epochs must be positive (or give max_steps)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` less the options added later at the value that trains as runs did before them, so
        what was keyed by a run's settings keeps its key."""
        return kept_options(self.to_dict(), LATER_OPTIONS)


def kept_options(options: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``options`` less each of the ``later`` options at the value that trains as runs did before it
    existed: what a cache key hashes, so that what was keyed before an option was added keeps its key."""
    return {name: value for name, value in options.items() if name not in later or value != later[name]}


# Options added to TrainingConfig after runs were first keyed by it, each at its same-recipe value.
LATER_OPTIONS: dict[str, Any] = {"unpadded": True}


@dataclass
class PerturbationConfig:
    """How the alignment loop perturbs the attention outputs (see vaccine_core.perturbation)."""

    method: AlignmentMethod = "vaccine"
    rho: float = 2.0
    tau: int = 1

    def __post_init__(self) -> None:
        if self.method not in ALIGNMENT_METHODS:
            raise ValueError(f"method must be one of {', '.join(ALIGNMENT_METHODS)}, got {self.method!r}")
        if self.rho < 0:
            raise ValueError(f"rho must be non-negative, got {self.rho}")
        if self.tau < 1:
            raise ValueError(f"tau must be at least 1, got {self.tau}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alignment_defaults() -> TrainingConfig:
    """The reference alignment setup: AdamW lr 1e-3, weight decay 0.1, batch 5, cosine with 10 % warm-up,
    LoRA r=8, alpha=4, dropout 0.1 on every projection."""
    return TrainingConfig()


def finetune_defaults() -> TrainingConfig:
    """User fine-tuning: a fresh adapter on the merged aligned base. The reference attack used lr 1e-5 for
    20 epochs and LoRA alpha 1, which teaches a small model next to nothing in a few epochs; a service
    default must learn the user's task, so the scale is 1 (alpha = r) and the rate 1e-4."""
    return TrainingConfig(
        epochs=3.0,
        learning_rate=1e-4,
        weight_decay=0.0,
        lora=LoraSettings(r=8, alpha=8.0, dropout=0.1),
    )
