"""The defenses' options, apart from their code so that a service can read and validate them without
loading torch: each default beside its help text, as in TRL/PEFT configs."""

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args


@dataclass
class BoosterConfig:
    lamb: float = field(
        default=5.0, metadata={"help": "Weight lambda of the attenuation term (reference: 5)."}
    )
    alpha: float = field(
        default=0.1, metadata={"help": "Length of the simulated harmful step (reference: 0.1)."}
    )
    batch_size: int = field(default=10, metadata={"help": "Harmful pairs per step (reference: 10)."})

    def __post_init__(self) -> None:
        if self.lamb < 0 or self.alpha <= 0 or self.batch_size < 1:
            raise ValueError("Booster needs lamb >= 0, alpha > 0 and batch_size >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# pairs the preference term draws from: half harmful requests (refusal preferred over compliance), half
# sensitive-sounding benign ones (helpful answer preferred over a refusal); data, not an option of the method
PREFERENCE_PAIRS = 200


@dataclass
class PreferenceConfig:
    beta: float = field(
        default=0.1,
        metadata={"help": "DPO's beta: how strongly the margin over the reference counts (paper: 0.1)."},
    )
    weight: float = field(
        default=1.0, metadata={"help": "Weight of the preference loss beside the alignment loss."}
    )
    batch_size: int = field(
        default=2,
        metadata={
            "help": "Request pairs per step, each a chosen and a rejected answer (a pass with gradient and "
            "one without over 4 answers, beside the alignment's batch): 2 draws each of the 200 pairs about "
            "once (240 draws) in a 120-step alignment."
        },
    )

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.weight < 0 or self.batch_size < 1:
            raise ValueError("the preference term needs beta > 0, weight >= 0 and batch_size >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# safety pairs Lisa's alignment state draws from (rows the base was not aligned on): data, not an option of
# the method, so it stays out of LisaConfig (and out of the caches keyed by it)
LISA_SAFETY_PAIRS = 100


@dataclass
class LisaConfig:
    alignment_steps: int = field(default=1, metadata={"help": "Safety steps per cycle (reference: 100)."})
    finetune_steps: int = field(default=9, metadata={"help": "User-data steps per cycle (reference: 900)."})
    rho: float = field(default=1.0, metadata={"help": "Proximal strength (reference: 1)."})
    proximal_after: float = field(
        default=0.1, metadata={"help": "Share of the run before the proximal term applies (reference: 0.1)."}
    )

    def __post_init__(self) -> None:
        if self.alignment_steps < 1 or self.finetune_steps < 1:
            raise ValueError("Lisa needs at least one step of each state per cycle")
        if self.rho < 0 or not 0 <= self.proximal_after < 1:
            raise ValueError("Lisa's rho must be non-negative and proximal_after in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenConstraintConfig:
    beta: float = field(
        default=0.1,
        metadata={"help": "Strength beta_t of answer tokens after the first bias_length (reference: 0.1)."},
    )
    bias_factor: float = field(
        default=20.0,
        metadata={"help": "Answer tokens 2 to bias_length get beta * bias_factor (reference: 20)."},
    )
    first_token_bias_factor: float = field(
        default=5.0,
        metadata={"help": "The first answer token gets beta * first_token_bias_factor (reference: 5)."},
    )
    bias_length: int = field(
        default=5,
        metadata={"help": "How many first answer tokens get the stronger constraint (reference: 5)."},
    )

    def __post_init__(self) -> None:
        if (
            self.beta <= 0
            or self.bias_factor <= 0
            or self.first_token_bias_factor <= 0
            or self.bias_length < 0
        ):
            raise ValueError("the token constraint needs beta and both factors > 0 and bias_length >= 0")

    def betas(self, length: int) -> list[float]:
        """beta_t for an answer's tokens 1..length."""
        return [
            self.beta * (self.first_token_bias_factor if t == 0 else self.bias_factor)
            if t < self.bias_length
            else self.beta
            for t in range(length)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackdoorAlignConfig:
    safety_pairs: int = field(
        default=11,
        metadata={"help": "Safety pairs added to the user's rows under the secret prompt (reference: 11)."},
    )
    secret_tokens: int = field(
        default=64,
        metadata={
            "help": "Random tokens in the secret system prompt (reference: 150, which would leave half the "
            "safety pairs' refusals cut short in 256-token rows)."
        },
    )
    secret_seed: int = field(default=0, metadata={"help": "Seed of the secret's draw from the vocabulary."})

    def __post_init__(self) -> None:
        if self.safety_pairs < 1 or self.secret_tokens < 1:
            raise ValueError("BackdoorAlign needs at least one safety pair and one secret token")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SafeLoraConfig:
    threshold: float = field(
        default=0.5,
        metadata={"help": "Project a layer whose update's cosine with its projection is at most this."},
    )

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError("Safe LoRA's threshold is a cosine: it lies in [-1, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


@dataclass
class SafetyLayersConfig:
    low: float = field(
        default=0.1,
        metadata={
            "help": "The safety layers start at the first layer whose output carries this share of the "
            "largest separation between harmful and harmless requests (Fisher's ratio)."
        },
    )
    high: float = field(
        default=0.9,
        metadata={"help": "... and end at the first layer whose output carries this share of it."},
    )
    requests: int = field(
        default=64,
        metadata={"help": "Harmful and harmless requests each (never aligned on) the separation is read on."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the requests' draw."})

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high <= 1 or self.requests < 2:
            raise ValueError("the safety layers need 0 < low <= high <= 1 and 2 or more requests a kind")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# RESTA's safety vectors (RestaConfig.vector's help says what each is)
RestaVector = Literal["alignment", "harmful", "contrast"]
RESTA_VECTORS: tuple[str, ...] = get_args(RestaVector)
# the adapters of the base that a vector is built from, besides the base's own alignment adapter
VectorAdapterKind = Literal["harmful", "benign"]
VECTOR_ADAPTERS: dict[str, tuple[VectorAdapterKind, ...]] = {
    "alignment": (),
    "harmful": ("harmful",),
    "contrast": ("harmful", "benign"),
}


@dataclass
class RestaConfig:
    scale: float = field(
        default=1.0,
        metadata={
            "help": "How much of the safety vector is added to the user's adapter (RESTA adds its safety "
            "vector once: 1)."
        },
    )
    vector: RestaVector = field(
        default="alignment",
        metadata={
            "help": "The safety vector: 'alignment', the base's own alignment update (aligned minus "
            "unaligned weights); 'harmful', RESTA's own, the aligned base minus that base fine-tuned on "
            "harmful pairs (the negated update of the base's harmful adapter, resta.HARMFUL_ADAPTER); "
            "'contrast', the harmful one with a benign control: the harmful adapter's update minus that "
            "of the base fine-tuned alike on helpful answers (resta.BENIGN_ADAPTER), negated, so what any "
            "fine-tuning teaches is not undone with what harmful pairs teach (this project's trial)."
        },
    )

    outside_user: bool = field(
        default=False,
        metadata={
            "help": "Add only the part of the safety vector outside the user's update, layer by layer: its "
            "columns projected off the user's output directions and its rows off the user's input "
            "directions, so the vector cannot undo what the user's adapter trained along its own directions "
            "(a trial of this project's, not RESTA's)."
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale <= 4.0:
            raise ValueError("RESTA's scale lies in [0, 4]: a share of the safety vector, added")
        if self.vector not in RESTA_VECTORS:
            raise ValueError(f"RESTA's vector is one of {RESTA_VECTORS}, not {self.vector!r}")

    def to_dict(self) -> dict[str, Any]:
        # options added later record themselves only when set, so an earlier record reads as it always did
        return (
            {"scale": self.scale}
            | ({"vector": self.vector} if self.vector != "alignment" else {})
            | ({"outside_user": True} if self.outside_user else {})
        )
