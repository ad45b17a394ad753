"""Paired bootstrap intervals over prompts and seeds.

Outcomes are arrays shaped [seeds, prompts, samples] (1.0 where, say, an answer is harmful). A resample
draws seeds with replacement and, independently, prompts with replacement; the statistic is the mean over
the drawn cells. Two arms measured on the same prompts and seeds are resampled with the *same* draws, so
their gap's interval reflects how the two differ on the same prompts, not how much prompts differ.
"""

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def as_dict(self, scale: float = 1.0) -> dict[str, float | list[float]]:
        return {"mean": self.mean * scale, "ci95": [self.low * scale, self.high * scale]}


def _resampled_means(outcomes: np.ndarray, seed_draws: np.ndarray, prompt_draws: np.ndarray) -> np.ndarray:
    # [resamples, seeds, prompts, samples] gathered, then averaged per resample
    picked = outcomes[seed_draws[:, :, None], prompt_draws[:, None, :]]
    return picked.reshape(len(seed_draws), -1).mean(axis=1)


def _draws(shape: tuple[int, ...], resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds, prompts = shape[0], shape[1]
    return rng.integers(0, seeds, (resamples, seeds)), rng.integers(0, prompts, (resamples, prompts))


def as_outcomes(values: np.ndarray | list) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:  # [seeds, prompts]: one answer per prompt
        array = array[:, :, None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"outcomes must be shaped [seeds, prompts, samples], got {array.shape}")
    return array


def bootstrap_mean(values: np.ndarray | list, *, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean of the outcomes and its percentile interval."""
    outcomes = as_outcomes(values)
    means = _resampled_means(outcomes, *_draws(outcomes.shape, resamples, seed))
    tail = (1 - CONFIDENCE) / 2 * 100
    return Interval(float(outcomes.mean()), *map(float, np.percentile(means, [tail, 100 - tail])))


def paired_gap(
    first: np.ndarray | list, second: np.ndarray | list, *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """mean(first) - mean(second) and its interval, both arms resampled with the same draws."""
    a, b = as_outcomes(first), as_outcomes(second)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"a paired gap needs the same seeds and prompts: {a.shape} vs {b.shape}")
    draws = _draws(a.shape, resamples, seed)
    gaps = _resampled_means(a, *draws) - _resampled_means(b, *draws)
    tail = (1 - CONFIDENCE) / 2 * 100
    return Interval(float(a.mean() - b.mean()), *map(float, np.percentile(gaps, [tail, 100 - tail])))


def bootstrap_ratio(
    numerator: np.ndarray | list, denominator: np.ndarray | list, *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """mean(numerator) / mean(denominator) over the same draws (the harmful share among answers that are
    not degenerate, say); a resample whose denominator is 0 counts as 0."""
    a, b = as_outcomes(numerator), as_outcomes(denominator)
    draws = _draws(a.shape, resamples, seed)
    top, bottom = _resampled_means(a, *draws), _resampled_means(b, *draws)
    ratios = np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)
    tail = (1 - CONFIDENCE) / 2 * 100
    value = float(a.mean() / b.mean()) if b.mean() > 0 else 0.0
    return Interval(value, *map(float, np.percentile(ratios, [tail, 100 - tail])))
