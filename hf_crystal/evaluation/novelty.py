"""Uniqueness within a sample and novelty against a training set with pymatgen's StructureMatcher."""

from __future__ import annotations

from collections import defaultdict

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

# FlowMM (Miller et al. 2024) matcher settings, the same as CDVAE's reconstruction matcher.
MATCHER_STOL = 0.5
MATCHER_ANGLE_TOL = 10.0
MATCHER_LTOL = 0.3


def default_matcher() -> StructureMatcher:
    """StructureMatcher with FlowMM's tolerances (reduces to primitive cells, so supercells match)."""
    return StructureMatcher(stol=MATCHER_STOL, angle_tol=MATCHER_ANGLE_TOL, ltol=MATCHER_LTOL)


def _formula(s: Structure) -> str:
    return s.composition.reduced_formula


def unique_flags(
    structures: list[Structure], matcher: StructureMatcher | None = None, *, progress: bool = False
) -> list[bool]:
    """True for the first structure of each group of mutual matches, False for later duplicates."""
    matcher = matcher or default_matcher()
    kept: dict[str, list[Structure]] = defaultdict(list)
    flags = []
    for s in tqdm(structures, desc="uniqueness", disable=not progress):
        seen = kept[_formula(s)]
        duplicate = any(matcher.fit(s, other) for other in seen)
        if not duplicate:
            seen.append(s)
        flags.append(not duplicate)
    return flags


def novel_flags(
    structures: list[Structure],
    training: list[Structure],
    matcher: StructureMatcher | None = None,
    *,
    progress: bool = False,
) -> list[bool]:
    """True for each structure that matches no training structure of the same reduced formula."""
    matcher = matcher or default_matcher()
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for t in training:
        by_formula[_formula(t)].append(t)
    return [
        not any(matcher.fit(s, t) for t in by_formula.get(_formula(s), []))
        for s in tqdm(structures, desc="novelty", disable=not progress)
    ]
