"""A random baseline: pyxtal random crystals with the compositions (optionally the space groups) of a sample.

Read any evaluation against "random structures of these compositions": every output structure has exactly
its sample's composition (the same number of atoms of each element in the cell) and its sample's id.

- Default: each attempt draws a space group uniformly among those pyxtal finds compatible with the
  composition's atom counts, and places the atoms on random Wyckoff positions of that group.
- ``same_spacegroup=True``: the space group of the sample (pymatgen's ``SpacegroupAnalyzer`` at
  ``symprec``, or at symprec / 10 or / 100 when spglib fails: LLM samples can hold atoms closer than the
  tolerance; coinciding atoms have no space group and count as failures). pyxtal counts atoms in the conventional cell: when the sample's counts do not fit the group
  (a primitive cell of a centred lattice), the conventional counts are generated and the result is reduced
  to its primitive cell, which must give back the sample's counts.

Each sample gets ``attempts`` tries from its own random stream (``seed`` and the sample's position), so a
run is reproducible and one sample's failures do not shift another's structure. Samples pyxtal cannot
build are returned with the reason, never dropped silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from pymatgen.core import Composition, Structure

__all__ = ["DEFAULT_ATTEMPTS", "RandomBaseline", "compatible_spacegroups", "random_like"]

DEFAULT_ATTEMPTS = 10
DEFAULT_SYMPREC = 0.1  # hf_crystal.data.SYMPREC: the tolerance the datasets use


@dataclass
class RandomBaseline:
    """Outcome of ``random_like``: (id, structure) built, (id, reason) not built, and the space group each
    built structure was drawn in."""

    structures: list[tuple[str, Structure]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    spacegroups: dict[str, int] = field(default_factory=dict)


@cache
def _group(number: int):
    from pyxtal.symmetry import Group

    return Group(number)


@cache
def compatible_spacegroups(counts: tuple[int, ...]) -> tuple[int, ...]:
    """Space groups (1-230) whose Wyckoff positions pyxtal can fill with these atom counts."""
    return tuple(n for n in range(1, 231) if _group(n).check_compatible(list(counts))[0])


def _counts(composition: Composition) -> tuple[list[str], list[int]] | None:
    species = sorted(composition.elements, key=lambda el: el.symbol)
    amounts = [composition[el] for el in species]
    if any(abs(a - round(a)) > 1e-8 for a in amounts):
        return None
    return [el.symbol for el in species], [int(round(a)) for a in amounts]


def _pyxtal(group: int, species: list[str], counts: list[int], rng: np.random.Generator) -> Structure | None:
    from pyxtal import pyxtal

    crystal = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal.from_random(3, group, species, counts, max_count=1, random_state=rng)
    except Exception:  # pyxtal raises RuntimeError / its own errors when atoms do not fit
        return None
    if not crystal.valid:
        return None
    return crystal.to_pymatgen()


def _one(
    structure: Structure,
    rng: np.random.Generator,
    attempts: int,
    same_spacegroup: bool,
    symprec: float,
) -> tuple[Structure | None, int | None, str | None]:
    composition = structure.composition
    formula = composition.formula.replace(" ", "")
    parsed = _counts(composition)
    if parsed is None:
        return None, None, f"partial occupancies ({formula})"
    species, counts = parsed
    if same_spacegroup:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        found = None
        for tolerance in (symprec, symprec / 10, symprec / 100):
            try:
                analyzer = SpacegroupAnalyzer(structure, symprec=tolerance)
                group = analyzer.get_space_group_number()
                conventional = len(analyzer.get_conventional_standard_structure())
                primitive = len(analyzer.find_primitive())
            except Exception as exc:  # spglib fails on atoms closer than the tolerance
                found = found or str(exc)
                continue
            found = None
            break
        if found is not None:
            return None, None, f"space group not found (symprec {symprec:g} to {symprec / 100:g}): {found}"
        options = [(counts, 1)]
        factor = conventional // primitive if primitive and conventional % primitive == 0 else 1
        if factor > 1:
            options.append(([c * factor for c in counts], factor))
        fitting = [(c, f) for c, f in options if _group(group).check_compatible(c)[0]]
        if not fitting:
            return None, group, f"composition {formula} does not fit space group {group}"
        target, factor = fitting[0]
        for _ in range(attempts):
            built = _pyxtal(group, species, target, rng)
            if built is not None and factor > 1:
                built = built.get_primitive_structure()
            if built is not None and built.composition == composition:
                return built, group, None
        return (
            None,
            group,
            f"pyxtal built no {formula} in space group {group} in {attempts} attempts",
        )
    groups = compatible_spacegroups(tuple(counts))
    if not groups:
        return None, None, f"no space group fits {formula}"
    for _ in range(attempts):
        group = int(rng.choice(groups))
        built = _pyxtal(group, species, counts, rng)
        if built is not None and built.composition == composition:
            return built, group, None
    return None, None, f"pyxtal built no {formula} in {attempts} attempts (random space groups)"


def random_like(
    samples: Sequence[tuple[str, Structure]],
    *,
    same_spacegroup: bool = False,
    attempts: int = DEFAULT_ATTEMPTS,
    seed: int = 0,
    symprec: float = DEFAULT_SYMPREC,
    progress: bool = False,
) -> RandomBaseline:
    """Random crystals with the compositions (and with ``same_spacegroup`` the space groups) of ``samples``
    (id, structure); see the module docstring."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    from tqdm.auto import tqdm

    out = RandomBaseline()
    for index, (name, structure) in enumerate(tqdm(samples, desc="random", disable=not progress)):
        rng = np.random.default_rng([seed, index])
        built, group, reason = _one(structure, rng, attempts, same_spacegroup, symprec)
        if built is None:
            out.failures.append((name, reason))
        else:
            out.structures.append((name, built))
            out.spacegroups[name] = group
    return out
