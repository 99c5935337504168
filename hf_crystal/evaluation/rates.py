"""Rates of a set of structures with their 95% intervals: one implementation for every metric that has one."""

from __future__ import annotations

__all__ = ["format_rate", "wilson_interval"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927, via `scipy.stats.binomtest`); (NaN, NaN) when
    ``n`` is 0."""
    from scipy.stats import binomtest

    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def format_rate(successes: int, n: int) -> str:
    """'0.584 [0.540, 0.626]': the share ``successes / n`` with its 95% Wilson interval, as report tables print it."""
    low, high = wilson_interval(successes, n)
    return f"{successes / n:.3f} [{low:.3f}, {high:.3f}]"
