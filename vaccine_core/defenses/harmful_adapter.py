"""RESTA's unsafe copy of an aligned base (``RestaConfig(vector="harmful")``): the base fine-tuned, the
way an attack fine-tunes it, on harmful pairs. Its update, negated, is the safety vector. Its benign
control (``vector="contrast"``) is the same fine-tuning on helpful pairs the base was not aligned on,
kept beside it.

It is trained once per base and recipe and kept in the base's directory (``resta.HARMFUL_ADAPTER``), or
wherever its owner keeps it (the service: its own directory, never a base it adopted), beside a marker
holding the key of what it was trained on (the rows and the training config), written last: an adapter
whose training was interrupted, or that was trained on other rows, is trained again. A lock beside it
keeps two workers from training it at the same time.
"""

import random
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from vaccine_core.artifacts import ADAPTER_WEIGHTS, value_key
from vaccine_core.build_lock import building
from vaccine_core.config import TrainingConfig, finetune_defaults
from vaccine_core.defenses.config import VectorAdapterKind
from vaccine_core.defenses.data import aligned_requests, booster_pairs, helpful_pairs
from vaccine_core.defenses.resta import benign_adapter_dir, harmful_adapter_dir
from vaccine_core.finetune import finetune
from vaccine_core.mixing import write_rows
from vaccine_core.text import normalised

# as many rows as the safety grid's attacks have: the unsafe copy learns what one such attack teaches
HARMFUL_PAIRS = 40


def harmful_rows(
    data_dir: Path, exclude: Collection[str] = (), count: int = HARMFUL_PAIRS, seed: int = 0
) -> list[dict[str, Any]]:
    """``count`` harmful (request, answer) pairs, JailbreakBench's judged-harmful answers (never the attack
    set), sampled with ``seed``; none to a request in ``exclude`` (normalised), so an evaluation never
    measures the very requests the vector was built to move away from."""
    pairs = [row for row in booster_pairs(data_dir) if normalised(row["instruction"]) not in exclude]
    return random.Random(seed).sample(pairs, min(count, len(pairs)))


def adapter_key(rows: list[dict[str, Any]], config: TrainingConfig) -> str:
    """What the adapter was trained on, in 12 hex digits."""
    return value_key([rows, config.key_dict()])


def build_adapter(
    base: Path,
    rows: list[dict[str, Any]],
    config: TrainingConfig,
    out: Path,
    base_model: PreTrainedModel | None = None,
    taught: str = "harmful",
) -> tuple[str, float]:
    """Train an adapter of ``base`` on ``rows`` (``taught`` pairs) with ``config`` into ``out`` unless the
    one there was trained on the same; its key and the seconds spent training it (0 when it was there).
    ``base_model`` is the base already loaded (``finetune``'s)."""
    if not (Path(base) / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"RESTA needs an aligned base (an alignment run's directory), not {base}")
    if not rows:
        raise ValueError(f"RESTA needs {taught} pairs to train the base's {Path(out).name} on")
    key = adapter_key(rows, config)
    marker = out.with_name(f"{out.name}.key")
    with building(out):
        if marker.is_file() and marker.read_text() == key and (out / ADAPTER_WEIGHTS).is_file():
            return key, 0.0
        started = time.perf_counter()
        marker.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        write_rows(out / "data.jsonl", rows)
        finetune(base, out / "data.jsonl", out, config, base_model=base_model)
        marker.write_text(key)  # last: an interrupted adapter is trained again
        return key, time.perf_counter() - started


def build_harmful_adapter(
    base: Path,
    rows: list[dict[str, Any]],
    config: TrainingConfig,
    base_model: PreTrainedModel | None = None,
    out: Path | None = None,
) -> tuple[str, float]:
    """``build_adapter`` into ``out`` (default: the base's ``HARMFUL_ADAPTER``)."""
    return build_adapter(base, rows, config, harmful_adapter_dir(base, out), base_model)


@dataclass(frozen=True)
class VectorAdapter:
    path: Path
    pairs: int  # the pairs it was trained on
    taught: str  # what they are: harmful or helpful
    seconds: float  # spent training it now: 0 when it was there already


def ensure_vector_adapter(
    kind: VectorAdapterKind,
    base: Path,
    data_dir: Path,
    *,
    exclude: Collection[str] = (),
    out: Path | None = None,
    base_model: PreTrainedModel | None = None,
) -> VectorAdapter:
    """``base``'s harmful adapter (``kind`` "harmful") or its benign control ("benign") as the service and
    the CLI build them: trained, unless it is there, as a user's job with the fine-tuning defaults would be
    (seed 0). The harmful one on ``HARMFUL_PAIRS`` harmful pairs, the control on as many helpful pairs the
    base was not aligned on; none a request in ``exclude``. The harmful one is kept in ``out`` (default:
    the base's ``HARMFUL_ADAPTER``), the control beside it."""
    harmful = harmful_rows(data_dir, exclude=exclude)
    config = replace(finetune_defaults(), seed=0)
    path = harmful_adapter_dir(base, out)
    if kind == "harmful":
        rows, taught = harmful, "harmful"
    else:
        rows = helpful_pairs(data_dir, aligned_requests(base), len(harmful), exclude=exclude)
        path, taught = benign_adapter_dir(path), "helpful"
    _, seconds = build_adapter(Path(base), rows, config, path, base_model=base_model, taught=taught)
    return VectorAdapter(path, len(rows), taught, seconds)
