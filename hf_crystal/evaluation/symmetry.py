"""Symmetry metrics of a set of structures against a reference set.

Space groups are spglib's (through pymatgen's `SpacegroupAnalyzer`) at each `symprec`, 0.1 Å as the headline and
0.01 Å beside it; a structure whose group spglib cannot find is "undetermined": counted apart, never dropped.
The space-group chi-square is WyckoffTransformer's (Kazeev et al. 2025, `get_sg_chi2`): sample counts restricted
to the groups present in the reference, normalised, against the reference's frequencies
(`scipy.stats.chisquare(...).statistic`). It shrinks as N grows, so it comes with its data floor at the same N:
reference structures resampled against the reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from hf_crystal.evaluation.rates import wilson_interval
from hf_crystal.symmetry import CRYSTAL_SYSTEMS, crystal_system, space_group

__all__ = [
    "SYMPRECS",
    "SYMMETRY_METRICS",
    "crystal_system_shares",
    "group_metrics",
    "space_group_chi2",
    "space_groups",
    "symmetry_metrics",
]

SYMPRECS = (0.1, 0.01)
# Crystal systems from tetragonal up (the measure of "highly symmetric").
_TETRAGONAL_OR_HIGHER = frozenset(CRYSTAL_SYSTEMS[3:])
# Resampled reference sets used to estimate the chi-square's data floor.
_FLOOR_DRAWS = 20

# Keys of `symmetry_metrics` for each symprec `s` (suffix `_sp{s}`, e.g. `p1_rate_sp0.1`); relaxed structures get
# the prefix `relaxed_`. Rates are over the structures given (their denominator `n_symmetry`).
SYMMETRY_METRICS = {
    "n_symmetry": "structures whose space group was looked for (denominator of the symmetry rates)",
    "p1_rate": "fraction whose space group is P1 (number 1)",
    "p1_rate_ci95": "95% Wilson interval of p1_rate",
    "undetermined_rate": "fraction whose space group spglib cannot find",
    "undetermined_rate_ci95": "95% Wilson interval of undetermined_rate",
    "p1_or_undetermined_rate": "p1_rate + undetermined_rate",
    "tetragonal_or_higher_rate": "fraction in the tetragonal, trigonal, hexagonal or cubic system",
    "n_space_groups": "distinct space groups found",
    "sg_chi2": "space-group chi-square against the reference (WyckoffTransformer's get_sg_chi2)",
    "sg_chi2_floor": f"mean sg_chi2 of {_FLOOR_DRAWS} draws of as many reference structures (with replacement) "
    "against the reference: what real data scores at this N",
    "crystal_systems": "share of each crystal system among the structures whose group was found",
    "reference_p1_rate": "p1_rate of the reference",
    "reference_crystal_systems": "crystal_systems of the reference",
}


def _tag(symprec: float) -> str:
    return f"_sp{symprec:g}"


def space_groups(
    structures: Sequence[Structure], symprec: float, progress: bool = False, desc: str = "space groups"
) -> list[int | None]:
    """Space-group number of each structure at `symprec` (Å); None where spglib finds none."""
    return [space_group(s, symprec) for s in tqdm(structures, desc=desc, disable=not progress)]


def space_group_chi2(groups: Sequence[int | None], reference_groups: Sequence[int | None]) -> float:
    """WyckoffTransformer's space-group chi-square of `groups` against `reference_groups` (None entries ignored).

    Sample counts are restricted to the groups present in the reference and normalised; the statistic is
    `scipy.stats.chisquare(sample_freq, f_exp=reference_freq).statistic`. NaN when no sample lies in a reference
    group.
    """
    from scipy.stats import chisquare

    reference = Counter(g for g in reference_groups if g is not None)
    if not reference:
        return float("nan")
    keys = sorted(reference)
    expected = np.array([reference[k] for k in keys], dtype=float)
    counts = Counter(g for g in groups if g is not None)
    observed = np.array([counts[k] for k in keys], dtype=float)
    if observed.sum() == 0:
        return float("nan")
    return float(chisquare(observed / observed.sum(), f_exp=expected / expected.sum()).statistic)


def crystal_system_shares(groups: Sequence[int | None]) -> dict[str, float] | None:
    """Share of each crystal system among the structures whose group is known (None if there is none)."""
    systems = Counter(crystal_system(g) for g in groups if g is not None)
    total = sum(systems.values())
    return {name: systems[name] / total for name in CRYSTAL_SYSTEMS} if total else None


def _interval(count: int, n: int) -> list[float] | None:
    return list(wilson_interval(count, n)) if n else None


def _chi2_floor(n: int, reference_groups: Sequence[int | None], seed: int = 0) -> float:
    if n == 0 or not reference_groups:
        return float("nan")
    rng = np.random.default_rng(seed)
    reference = np.array(reference_groups, dtype=object)
    draws = [space_group_chi2(rng.choice(reference, n), reference_groups) for _ in range(_FLOOR_DRAWS)]
    return float(np.nanmean(draws)) if not np.all(np.isnan(draws)) else float("nan")


def group_metrics(
    groups: Sequence[int | None], reference_groups: Sequence[int | None], symprec: float
) -> dict:
    """The `SYMMETRY_METRICS` (suffixed `_sp{symprec}`) of space groups already found."""
    n = len(groups)
    p1 = sum(g == 1 for g in groups)
    undetermined = sum(g is None for g in groups)
    known = [g for g in groups if g is not None]
    nan = float("nan")
    out = {
        "n_symmetry": n,
        "p1_rate": p1 / n if n else nan,
        "p1_rate_ci95": _interval(p1, n),
        "undetermined_rate": undetermined / n if n else nan,
        "undetermined_rate_ci95": _interval(undetermined, n),
        "p1_or_undetermined_rate": (p1 + undetermined) / n if n else nan,
        "tetragonal_or_higher_rate": sum(crystal_system(g) in _TETRAGONAL_OR_HIGHER for g in known) / n
        if n
        else nan,
        "n_space_groups": len(set(known)),
        "sg_chi2": space_group_chi2(groups, reference_groups),
        "sg_chi2_floor": _chi2_floor(n, reference_groups),
        "crystal_systems": crystal_system_shares(groups),
        "reference_p1_rate": sum(g == 1 for g in reference_groups) / len(reference_groups)
        if reference_groups
        else nan,
        "reference_crystal_systems": crystal_system_shares(reference_groups),
    }
    return {key + _tag(symprec): value for key, value in out.items()}


def symmetry_metrics(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    symprecs: Sequence[float] = SYMPRECS,
    prefix: str = "",
    reference_groups: dict[float, list[int | None]] | None = None,
    progress: bool = False,
    groups: dict[float, list[int | None]] | None = None,
) -> tuple[dict, dict[float, list[int | None]], dict[float, list[int | None]]]:
    """`SYMMETRY_METRICS` of `structures` against `reference` at each symprec, keys `{prefix}{key}_sp{symprec}`.

    Args:
        reference_groups: the reference's groups per symprec, if already computed (e.g. for a second set).
        groups: the structures' groups per symprec, if already computed (e.g. on Ray by `hf_crystal.benchmark`).

    Returns:
        (metrics, the structures' space groups per symprec, the reference's space groups per symprec).
    """
    reference_groups = dict(reference_groups or {})
    metrics, found = {}, dict(groups or {})
    for symprec in symprecs:
        if symprec not in reference_groups:
            reference_groups[symprec] = space_groups(
                reference, symprec, progress, desc=f"space groups: reference (symprec {symprec:g})"
            )
        if symprec not in found:
            found[symprec] = space_groups(
                structures, symprec, progress, desc=f"space groups: {prefix}samples (symprec {symprec:g})"
            )
        metrics |= {
            prefix + k: v
            for k, v in group_metrics(found[symprec], reference_groups[symprec], symprec).items()
        }
    return metrics, found, reference_groups
