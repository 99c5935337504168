"""Which Wyckoff orbits of a space group can hold given atom counts: the feasibility behind constrained decoding of
Wyckoff text (`hf_crystal.constraints_wyckoff`) and its look-ahead (`hf_crystal.constraints_geometry`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np

from hf_crystal.text_wyckoff import _CENTERING_VECTORS

__all__ = ["feasible_groups", "fillable", "positions"]


@cache
def positions(number: int) -> tuple[tuple[str, int, int, bool], ...]:
    """(label, atoms in the primitive cell, free coordinates, fixed) of each Wyckoff position of a group, "a"
    first. Read from pyxtal's tables directly (all 230 groups in well under a second, for feasibility)."""
    from pyxtal.symmetry import Group, get_wyckoffs, letters

    per_cell = 1 + len(_CENTERING_VECTORS[Group(number, quick=True).symbol[0]])
    table = []
    for rank, ops in enumerate(reversed(get_wyckoffs(number))):
        dof = int((np.abs(ops[0].rotation_matrix).sum(axis=0) > 0).sum())
        table.append((f"{len(ops)}{letters[rank]}", len(ops) // per_cell, dof, dof == 0))
    return tuple(table)


@cache
def _free_sums(number: int, limit: int) -> frozenset[int]:
    """Atom counts (up to `limit`) that orbits on positions with free coordinates can make, any number of each."""
    sizes = sorted({m for _, m, _, fixed in positions(number) if not fixed})
    reach = np.zeros(limit + 1, dtype=bool)
    reach[0] = True
    for n in range(1, limit + 1):
        reach[n] = any(reach[n - m] for m in sizes if m <= n)
    return frozenset(np.flatnonzero(reach).tolist())


@cache
def fillable(number: int, counts: tuple[int, ...], used: frozenset[str]) -> bool:
    """Whether orbits of group `number` can hold exactly `counts` atoms per element, the fixed positions in
    `used` being taken already (each fixed position holds one orbit)."""
    if not counts:
        return True
    limit = max(counts)
    free = _free_sums(number, limit)
    fixed = [(label, m) for label, m, _, is_fixed in positions(number) if is_fixed and label not in used]
    first, rest = counts[0], counts[1:]
    # Which fixed positions the first element takes (a subset), the rest of its atoms on free positions.
    for mask in range(1 << len(fixed)):
        chosen = [fixed[i] for i in range(len(fixed)) if mask >> i & 1]
        total = sum(m for _, m in chosen)
        if total <= first and first - total in free:
            if fillable(number, rest, used | frozenset(label for label, _ in chosen)):
                return True
    return False


def feasible_groups(composition: Mapping[str, int]) -> list[int]:
    """Space groups whose Wyckoff positions can hold `composition` (atoms of the primitive cell)."""
    counts = tuple(sorted(int(n) for n in composition.values()))
    return [n for n in range(1, 231) if fillable(n, counts, frozenset())]
