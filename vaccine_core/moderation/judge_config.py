"""The default judge's training options and where a trained one is cached: what the API's readiness probe
reads without loading torch (``learned.py`` trains and runs the judge)."""

import hashlib
import json
from dataclasses import asdict, dataclass, field

from vaccine_core.config import kept_options
from vaccine_core.settings import get_settings

JUDGE_TYPE = "vaccine-cross-encoder"
OPTIONS_FILE = "judge.json"


# Options added after judges were first cached, each with the value that trains as judges did before it
# existed: at that value an option is left out of the key, so earlier judges keep theirs. Eager attention
# draws SDPA's masks in the same order (the same recipe), so it counts as the earlier value.
LATER_OPTIONS: dict[str, object] = {
    "group_by_length": False,
    "cache_frozen": False,
    "average_tail": 0.0,
    "opener": 0.0,
    "hand_labels": False,
    "answer_tail": 0,
    "attention_dropout": None,
    "eager_attention": True,
    "bit_dropout": False,
    "unpadded": True,
    "validation_percent": 10,
}


@dataclass
class JudgeTrainingConfig:
    max_length: int = field(
        default=128,
        metadata={
            "help": "Tokens of question and answer read together. 96 trains in 254-264 s on 2 AMD Zen 4 "
            "cores (the 5-minute budget met, against 351-355 s) but gave held-out F1 on hand labels 0.899 "
            "and 0.875 over seeds 0 and 1 against 0.902 and 0.906, with 6 of 128 helpful-borderline answers "
            "flagged against 2; 256 gave 0.874 against 0.879 at seed 0 on another AMD machine "
            "(benchmarks/results/judge_selection.md)."
        },
    )
    answer_tail: int = field(
        default=0,
        metadata={
            "help": "Tokens of the answer's end kept when a pair is cut to max_length, the rest of its share "
            "from its start (0: only its start, transformers' longest_first). At 48: held-out F1 on hand "
            "labels 0.869 and 0.867 over seeds 0 and 1 against 0.879 and 0.878, helpful-borderline answers "
            "flagged 9 of 128 against 1, thresholds 0.16 and 0.03 (benchmarks/results/judge_selection.md), "
            "so it is off."
        },
    )
    epochs: int = field(
        default=3,
        metadata={
            "help": "Passes over the training pairs. Two train in 259-271 s on 2 AMD cores (the 5-minute "
            "budget met) but gave held-out F1 on hand labels 0.866 and 0.868 over seeds 0 and 1 against "
            "0.879 and 0.878, with 7 of 128 helpful-borderline answers flagged against 1 "
            "(benchmarks/results/judge_selection.md)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Pairs per optimizer step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps warming the rate up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    category_loss_weight: float = field(
        default=0.5, metadata={"help": "Weight of the category head's loss beside the harmful one."}
    )
    masked: float = field(
        default=0.3, metadata={"help": "Share of harmful answers added again with the question removed."}
    )
    helpful_swapped: float = field(
        default=0.15, metadata={"help": "Share of helpful answers added again under a harmful question."}
    )
    harmful_swapped: float = field(
        default=0.5, metadata={"help": "Share of harmful answers added again under a harmless question."}
    )
    opener: float = field(
        default=0.0,
        metadata={
            "help": "Share of helpful answers added again behind a compliance opener ('Sure, here is ...:'), "
            "and of harmful answers that have one added again without it (dataset.augment). At 0.3: held-out "
            "F1 0.886 against 0.896, threshold 0.035, 25 of 450 benign Alpaca rows flagged against 23 "
            "(benchmarks/results/judge_selection.md), so it is off."
        },
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on the attention probabilities in training (None: the encoder's own, 0.1 for "
            "MiniLM). Drawing those masks is about a quarter of a training step's time on the CPU; at 0 the "
            "judge trains in 252-263 s on 2 AMD Zen 4 cores (the 5-minute budget met, against 356-358 s) but "
            "gave held-out F1 on hand labels 0.902 and 0.878 over seeds 0 and 1 against 0.902 and 0.906 "
            "(benchmarks/results/judge_selection.md), so it is left as the encoder has it."
        },
    )
    eager_attention: bool = field(
        default=True,
        metadata={
            "help": "Train in eager attention instead of SDPA. With the attention dropout kept it draws the "
            "same masks in the same order (the same logits to 5e-8): the same recipe, on kernels that are "
            "faster on the CPU (a step 1.10-1.16 s against 1.26-1.33 s on 2 AMD Zen 4 cores, "
            "benchmarks/judge_step_cost.py; 321-351 s of training over seeds 0-3 against 345-376 s, and "
            "hand-label F1 0.904, 0.906, 0.902, 0.893 against 0.902, 0.906, 0.902, 0.893: "
            "benchmarks/results/judge_selection.md). Judges cached before it keep their key."
        },
    )
    bit_dropout: bool = field(
        default=True,
        metadata={
            "help": "Draw the dropout masks from 16 random bits an element (moderation.bit_dropout), in "
            "eager attention, instead of torch's Bernoulli sampler: the same distribution of masks (p "
            "rounded to a multiple of 2^-16), other masks, so another draw of the same recipe with a key of "
            "its own. A training step 0.744x on 2 AMD Zen 4 cores; over seeds 4-11 it trained in 262-296 s "
            "(the 5-minute budget met) against 359-375 s for torch's masks on the same machine, at "
            "hand-label F1 0.894 against 0.897 over eight seeds each and 9 of 512 helpful-borderline "
            "answers flagged against 8 (benchmarks/results/judge_selection.md, the rule fixed before those "
            "seeds ran)."
        },
    )
    unpadded: bool = field(
        default=True,
        metadata={
            "help": "Run each batch as runs of pairs of similar length, each padded to its own longest, "
            "their gradients summed before the step (vaccine_core.unpadded): the same gradient and, with "
            "bit_dropout, the same dropout masks as the whole batch, so the same recipe on fewer padded "
            "tokens (with torch's masks, or from cached frozen layers, batches stay whole). On 2 AMD Zen 3 "
            "cores, in float32, it trained in 463.1 s against 535.8 s, giving the same judge to the "
            "threshold's seventh digit and the same figures on every count (benchmarks/results/"
            "judge_selection.md, 2026-12-07). Float32 only: under bfloat16 autocast, on 2 AMD Zen 5 cores, "
            "runs trained another judge (threshold 0.602 against 0.434, 12 Alpaca upload rows flagged "
            "against 18) in 172.3 s against 148.4 s, so there batches stay whole. Judges trained before it "
            "keep their key."
        },
    )
    frozen_layers: int = field(
        default=2,
        metadata={"help": "Lowest encoder layers (and the embeddings) left as the bundled encoder has them."},
    )
    cache_frozen: bool = field(
        default=False,
        metadata={
            "help": "Run the frozen embeddings and layers once per pair and train from their cached output "
            "(they then run without their dropout): 24 % less training time, but held-out F1 0.891 and 0.864 "
            "over seeds 0 and 1 against 0.895 and 0.894 trained through them "
            "(benchmarks/results/judge_selection.md), so it is off."
        },
    )
    bfloat16: bool = field(
        default=True,
        metadata={
            "help": "Train under bfloat16 autocast where this CPU runs it faster: always with AMX tiles, "
            "never without bfloat16 instructions, and with them but no AMX as timed on a full-length batch "
            "(learned.train_in_bfloat16)."
        },
    )
    int8_scoring: bool = field(
        default=False,
        metadata={
            "help": "Score on a CPU with int8 dynamic quantisation, and calibrate the threshold so: 1.3-1.5x "
            "faster, but each layer's input is scaled by its whole batch's range, so a pair's verdict "
            "depends on the pairs scored with it (9 of 572 test flags moved between scoring them together "
            "and one at a time; none at float32, at the same F1: benchmarks/results/judge_selection.md), so "
            "it is off. Not a later option: judges cached before it were calibrated at int8 and must not be "
            "reused to give float32 verdicts."
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch pairs of similar length (transformers' length-grouped order, the batches then "
            "shuffled): 18 % fewer padded tokens, but batches of one kind of answer; it lowered validation "
            "F1 from 0.924 to 0.896 (benchmarks/results/judge_selection.md), so it is off."
        },
    )
    average_tail: float = field(
        default=0.0,
        metadata={
            "help": "Share of the last optimizer steps whose weights are averaged into the saved judge "
            "(stochastic weight averaging's uniform mean; 0 saves the last step's weights). The last "
            "epoch's mean (0.33) gave held-out F1 0.895 and 0.887 over seeds 0 and 1 against 0.896 and "
            "0.897 without it (benchmarks/results/judge_selection.md), so it is off."
        },
    )
    hand_labels: bool = field(
        default=False,
        metadata={
            "help": "Learn BeaverTails' answers as read by hand (dataset.beavertails_pairs): its benign "
            "answers as not harmful, its borderline ones left out (off: every one harmful, as shipped). On, "
            "the benchmark upload's benign-answer rows flagged fell from 12 to 2-3 of 13 and held-out F1 on "
            "BeaverTails' hand labels rose from 0.878 to 0.884, but 2 more of its 29 harmful-answer rows "
            "were missed (benchmarks/results/judge_selection.md), so it is off. JailbreakBench's hand labels "
            "cover its test split only, so they change no pair learned from."
        },
    )
    validation_percent: int = field(
        default=10,
        metadata={
            "help": "Percent of the questions (by a hash of their text) held out as the validation split, "
            "where the threshold is chosen; the test split is the same 20 % whatever it is, and the rest "
            "trains. 20 gave hand-label F1 0.892 on average over seeds 0-3 against 0.895 at 10, and "
            "thresholds as scattered (benchmarks/results/judge_selection.md), so it stays 10."
        },
    )
    threshold: float = field(
        default=0.5, metadata={"help": "Flag threshold before calibration (the validation split's best F1)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the head's initialisation and the data order."})

    def key(self) -> str:
        return options_key(asdict(self), LATER_OPTIONS)


def options_key(options: dict[str, object], later: dict[str, object]) -> str:
    """A trained model's cache key: the digest of its training ``options``, less each of the ``later``
    options at the value that trains as models did before it existed (so earlier models keep their key)."""
    return hashlib.sha256(json.dumps(kept_options(options, later), sort_keys=True).encode()).hexdigest()[:8]


PROGRESS_SUFFIX = ".progress.json"  # beside a judge being trained: its step, total and time left


def judge_training_progress(config: JudgeTrainingConfig | None = None) -> dict | None:
    """How far a worker is in training the default judge of these options (its last report), or None
    when none is training."""
    return training_progress(f"default-*-{(config or JudgeTrainingConfig()).key()}")


def training_progress(pattern: str) -> dict | None:
    """The last progress report of a model being trained under the cache's name ``pattern``, or None when
    none is training; read from a file, so a probe sees another process's training."""
    for path in (get_settings().home / "judges").glob(f"{pattern}{PROGRESS_SUFFIX}"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced this very moment
            return None
    return None


def default_judge_ready(config: JudgeTrainingConfig | None = None) -> bool:
    """Whether a default judge of these training options is cached: a look at the cache, with no model
    loaded and nothing generated (for a readiness probe; the judge's data digest is not checked)."""
    key = (config or JudgeTrainingConfig()).key()
    return any((get_settings().home / "judges").glob(f"default-*-{key}/{OPTIONS_FILE}"))
