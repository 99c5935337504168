"""Wyckoff text: a crystal written by its space group, free lattice parameters and Wyckoff orbits.

The format (as in CrystalFormer and WyckoffTransformer), one value group per line::

    221                space-group number
    3.9                the lattice parameters the crystal system leaves free (lengths 1 decimal, angles integer)
    Sr 1a              one line per orbit: element, Wyckoff label (multiplicity and letter) and
    Ti 1b              only the free coordinates of its representative site (2 decimals)
    O 3c

One setting throughout (`WYCKOFF_SETTING`): the ITA standard setting with origin choice 2, hexagonal axes
for the rhombohedral groups and unique axis b, i.e. the Hall numbers of pyxtal's tables; spglib (default
origin choice 1) is asked for that Hall number. `decode` expands every orbit with the group's operations
(pyxtal's Wyckoff tables, applied with numpy) and returns the primitive cell; it never merges atoms, so two
orbits on one fixed position or a collapsed orbit give coincident atoms, a structurally invalid sample.
Without augmentation `encode` writes a canonical text: the same for any permutation or translation of the
structure (the origin is chosen among the group's Euclidean normalizer, pyxtal's `Group.get_alternatives()`,
and along polar axes; the representative of each orbit is the one with the smallest free coordinates).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np
import spglib
from pymatgen.core import Element, Lattice, Structure
from pymatgen.core.operations import SymmOp

from hf_crystal.crystal_format import WYCKOFF_SETTING
from hf_crystal.text import (
    ELEMENT_SYMBOLS,
    CrystalParseError,
    _lattice,
    as_rng,
)

__all__ = [
    "SYMPREC",
    "TWO_ORIGIN_GROUPS",
    "WYCKOFF_SETTING",
    "WyckoffOrbit",
    "WyckoffText",
    "crystal_system",
    "decode",
    "encode",
    "equivalent_origins",
    "lattice_parameter_names",
    "parse",
    "primitive_basis",
    "space_group_table",
    "standard_form",
]

#: The 24 groups with two origin choices: written in choice 2 (spglib's default is choice 1).
TWO_ORIGIN_GROUPS = (
    48,
    50,
    59,
    68,
    70,
    85,
    86,
    88,
    125,
    126,
    129,
    130,
    133,
    134,
    137,
    138,
    141,
    142,
    201,
    203,
    222,
    224,
    227,
    228,
)
#: spglib tolerance (Å) for the space group `encode` writes; lower ones are tried when spglib gives up.
SYMPREC = 0.1
#: spglib angle tolerance (degrees): pymatgen's SpacegroupAnalyzer default, so the group is the one it reports.
ANGLE_TOLERANCE = 5.0
_FALLBACK_SYMPREC = (0.01, 0.001)
# Fractional tolerance for "this point lies on that Wyckoff position" in spglib's idealized cell.
_ON_POSITION_TOL = 1e-3
_ELEMENTS = frozenset(ELEMENT_SYMBOLS)
_Z = {s: Element(s).Z for s in ELEMENT_SYMBOLS}

_CENTERING_VECTORS = {
    "P": [],
    "A": [[0, 0.5, 0.5]],
    "C": [[0.5, 0.5, 0]],
    "I": [[0.5, 0.5, 0.5]],
    "F": [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
    "R": [[2 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 2 / 3]],
}
# Rows: primitive lattice vectors in units of the conventional ones (obverse setting for R).
_PRIMITIVE = {
    "P": np.eye(3),
    "A": np.array([[1, 0, 0], [0, 0.5, 0.5], [0, -0.5, 0.5]]),
    "C": np.array([[0.5, -0.5, 0], [0.5, 0.5, 0], [0, 0, 1]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}
# Integer shifts tried when solving "rep(free) = point mod 1": representative coordinates are at most
# 2x a free value, so the shift lies in -2..2 for free values in [0, 1).
_SHIFTS = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T


def crystal_system(number: int) -> str:
    """The crystal system of space group `number` (1-230)."""
    for last, name in (
        (2, "triclinic"),
        (15, "monoclinic"),
        (74, "orthorhombic"),
        (142, "tetragonal"),
        (167, "trigonal"),
        (194, "hexagonal"),
        (230, "cubic"),
    ):
        if number <= last:
            return name
    raise ValueError(f"space group must be 1-230, got {number}")


_LATTICE_PARAMETERS = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "beta"),
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "trigonal": ("a", "c"),
    "hexagonal": ("a", "c"),
    "cubic": ("a",),
}


def lattice_parameter_names(number: int) -> tuple[str, ...]:
    """The lattice parameters the crystal system of group `number` leaves free, in the order written."""
    return _LATTICE_PARAMETERS[crystal_system(number)]


def _full_parameters(number: int, free: list[float]) -> tuple[list[float], list[float]]:
    """(a, b, c), (alpha, beta, gamma) from the free parameters of group `number`."""
    system = crystal_system(number)
    if system == "triclinic":
        return free[:3], free[3:]
    if system == "monoclinic":
        return free[:3], [90.0, free[3], 90.0]
    if system == "orthorhombic":
        return free, [90.0, 90.0, 90.0]
    if system == "tetragonal":
        return [free[0], free[0], free[1]], [90.0, 90.0, 90.0]
    if system in ("trigonal", "hexagonal"):
        return [free[0], free[0], free[1]], [90.0, 90.0, 120.0]
    return free * 3, [90.0, 90.0, 90.0]


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position of a group: its orbit operations (x, y, z) -> site, and its free coordinates."""

    label: str  # multiplicity + letter, e.g. "4a"
    letter: str
    multiplicity: int
    rank: int  # 0 for "a": the order of the letters in the tables (most special first)
    free: tuple[int, ...]  # which of x, y, z are free
    rotations: np.ndarray  # (multiplicity, 3, 3)
    translations: np.ndarray  # (multiplicity, 3)
    primitive_ops: np.ndarray  # indices of the operations left once centering copies are dropped
    representative: np.ndarray  # 3 x dof: free values -> representative site (minus its translation)
    solve: np.ndarray  # dof x 3: its pseudo-inverse

    @property
    def dof(self) -> int:
        return len(self.free)

    def sites(self, values) -> np.ndarray:
        """The `multiplicity` sites (conventional fractional coordinates, not wrapped) of the orbit."""
        xyz = np.zeros(3)
        xyz[list(self.free)] = values
        return self.rotations @ xyz + self.translations

    def free_values(self, points: np.ndarray) -> np.ndarray:
        """(k, dof) free values in [0, 1) of the points that lie on the representative (first) site."""
        target = points[:, None, :] - self.translations[0] + _SHIFTS[None]  # (n, shifts, 3)
        solution = target @ self.solve.T  # (n, shifts, dof): least squares through the pseudo-inverse
        residual = np.abs(solution @ self.representative.T - target).max(axis=-1)
        ok = residual < _ON_POSITION_TOL
        point_ok = ok.any(axis=1)
        first = ok.argmax(axis=1)
        return np.mod(solution[np.arange(len(points)), first][point_ok], 1.0)


@dataclass(frozen=True)
class SpaceGroupTable:
    """What the codec needs of a space group, read once from pyxtal's tables (see `space_group_table`)."""

    number: int
    symbol: str
    centering: str
    positions: tuple[WyckoffPosition, ...]  # "a" first
    by_letter: dict
    polar_axes: tuple[int, ...]  # axes along which any translation maps the group onto itself

    @property
    def hall_number(self) -> int:
        """spglib's Hall number of this setting (origin choice 2 where there are two)."""
        return _normalizer(self.number)[0]

    @property
    def alternatives(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Proper cosets (R, t) of the group in its Euclidean normalizer: the equivalent origins and axes."""
        return _normalizer(self.number)[1]


@cache
def _normalizer(number: int) -> tuple[int, tuple[tuple[np.ndarray, np.ndarray], ...]]:
    from pyxtal.symmetry import Group

    group = Group(number)
    alternatives = []
    for triplet in group.get_alternatives()["Coset Representative"]:
        op = SymmOp.from_xyz_str(triplet)
        if np.linalg.det(op.rotation_matrix) > 0:
            alternatives.append((op.rotation_matrix, op.translation_vector))
    return int(group.hall_number), tuple(alternatives)


@cache
def space_group_table(number: int) -> SpaceGroupTable:
    """The Wyckoff positions and polar axes of space group `number` in `WYCKOFF_SETTING` (pyxtal's tables)."""
    from pyxtal.symmetry import Group, get_wyckoffs, letters

    centering = Group(number, quick=True).symbol[0]
    vectors = np.array(_CENTERING_VECTORS[centering]).reshape(-1, 3)
    wyckoffs = get_wyckoffs(number)  # general position first, "a" last
    positions = []
    for rank, triplets in enumerate(reversed(wyckoffs)):
        ops = np.array([op.affine_matrix for op in triplets])
        rotations, translations = ops[:, :3, :3], ops[:, :3, 3]
        # Operations that differ from an earlier one by a centering translation only: one site of the
        # primitive cell between them.
        same = np.abs(rotations[:, None] - rotations[None]).max(axis=(-1, -2)) < 1e-9
        shift = translations[:, None, :] - translations[None, :, :]
        centered = np.zeros_like(same)
        for c in vectors:
            centered |= np.abs(_wrap(shift - c)).max(axis=-1) < 1e-6
        duplicate = same & centered
        kept = [j for j in range(len(ops)) if not duplicate[j, :j].any()]
        free = tuple(int(i) for i in np.flatnonzero(np.abs(rotations[0]).sum(axis=0) > 0))
        representative = rotations[0][:, list(free)]
        letter = letters[rank]
        positions.append(
            WyckoffPosition(
                label=f"{len(ops)}{letter}",
                letter=letter,
                multiplicity=len(ops),
                rank=rank,
                free=free,
                rotations=rotations,
                translations=translations,
                primitive_ops=np.array(kept),
                representative=representative,
                solve=np.linalg.pinv(representative) if free else np.zeros((0, 3)),
            )
        )
    general = positions[-1].rotations
    polar = tuple(i for i in range(3) if np.allclose(general[:, :, i], np.eye(3)[i]))
    return SpaceGroupTable(
        number=number,
        symbol=Group(number, quick=True).symbol,
        centering=centering,
        positions=tuple(positions),
        by_letter={p.letter: p for p in positions},
        polar_axes=polar,
    )


def primitive_basis(number: int) -> np.ndarray:
    """Rows: the primitive cell's vectors in units of the conventional ones (obverse for R), the cell
    `WyckoffText.to_structure` returns for group `number`."""
    return _PRIMITIVE[space_group_table(number).centering].copy()


def _wrap(x: np.ndarray) -> np.ndarray:
    """Fractional differences into [-0.5, 0.5)."""
    return np.asarray(x) - np.round(x)


# --------------------------------------------------------------------------------------------------- encode


@dataclass(frozen=True)
class _Standard:
    """A structure in the standard setting: conventional cell, atoms and the orbit of each atom."""

    number: int
    lattice: np.ndarray
    positions: np.ndarray
    symbols: list[str]
    orbits: np.ndarray


def _standardize(structure: Structure, symprec: float) -> _Standard | None:
    """The conventional cell in `WYCKOFF_SETTING` (spglib's standardization, positions averaged over the
    group: `_symmetrized`), or None when spglib finds no group."""
    symbols = [site.specie.symbol for site in structure]
    kinds = sorted(set(symbols))
    cell = (structure.lattice.matrix, structure.frac_coords, [kinds.index(s) for s in symbols])
    data = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)
    if data is None:
        return None
    hall = space_group_table(data.number).hall_number
    if data.hall_number != hall:
        data = spglib.get_symmetry_dataset(
            cell, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE, hall_number=hall
        )
        if data is None:
            return None
    # The input atom of each standard-cell atom, through its primitive atom.
    input_of_primitive = {int(p): i for i, p in enumerate(data.mapping_to_primitive)}
    inputs = np.array([input_of_primitive[int(p)] for p in data.std_mapping_to_primitive])
    ideal = np.mod(np.array(data.std_positions), 1.0)
    # The input atoms in the standard frame (x_std = P x + p), then symmetrized by the group's operations.
    raw = structure.frac_coords[inputs] @ np.array(data.transformation_matrix).T + data.origin_shift
    table = space_group_table(int(data.number))
    lattice = np.array(data.std_lattice)
    tolerance = max(_ON_POSITION_TOL, 2 * symprec / min(np.linalg.norm(lattice, axis=1)))
    positions, orbits = _symmetrized(table, ideal, raw, np.asarray(data.equivalent_atoms)[inputs], tolerance)
    return _Standard(
        number=int(data.number),
        lattice=lattice,
        positions=positions,
        symbols=[kinds[t] for t in data.std_types],
        orbits=orbits,
    )


def _symmetrized(
    table: SpaceGroupTable, ideal: np.ndarray, raw: np.ndarray, orbits: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, orbit of each atom): the average of the images of `raw` under every operation of the group,
    and the orbits those operations make.

    spglib's idealized positions are symmetric about an origin it may place up to its tolerance off (its
    translations are snapped), which moves every atom by as much and makes the text depend on where the
    structure sat in its cell; and its `equivalent_atoms` can split an orbit in two. The average of the raw
    positions' images does not depend on a shift of the input (except along polar axes, which `_write` pins),
    and the orbits are read from the group's own operations. `ideal` (exactly symmetric) gives the atom map of
    each operation (nearest image within `tolerance`, fractional: spglib's are not always exactly symmetric
    in the requested Hall setting); when that is no permutation, spglib's positions and `orbits` are kept.
    """
    general = table.positions[-1]
    rotations, translations = general.rotations, general.translations
    # Each standard atom as the input atom (or its centering copy) nearest to the idealized position.
    raw = ideal + _wrap(raw - ideal)
    centering = np.array([[0.0, 0.0, 0.0], *_CENTERING_VECTORS[table.centering]])
    candidates = raw[:, None, :] + centering[None]  # (n, centerings, 3)
    nearest = np.abs(_wrap(candidates - ideal[:, None, :])).max(axis=-1).argmin(axis=1)
    raw = ideal + _wrap(candidates[np.arange(len(raw)), nearest] - ideal)
    if np.abs(raw - ideal).max() > 0.25:
        return ideal, orbits
    images = ideal @ rotations.transpose(0, 2, 1) + translations[:, None, :]  # (ops, n, 3)
    distance = np.abs(_wrap(images[:, :, None, :] - ideal[None, None, :, :])).max(axis=-1)  # (ops, n, n)
    image_of = distance.argmin(axis=2)  # atom g(j) for operation g and atom j
    if distance.min(axis=2).max() > tolerance or any(
        len(set(row)) != len(ideal) for row in image_of.tolist()
    ):
        return ideal, orbits
    inverse = np.linalg.inv(rotations)
    back = np.einsum("gij,gnj->gni", inverse, raw[image_of] - translations[:, None, :])  # g^-1(r_g(j))
    positions = np.mod(raw + _wrap(back - raw[None]).mean(axis=0), 1.0)
    # The orbit of atom j is {g(j)}: label each atom by the smallest atom of its orbit.
    return positions, image_of.min(axis=0)


# Standard cells of recently encoded structures: augmented draws of one structure (a training epoch after
# another) then cost one spglib call in all (about 20 ms, 10x the drawing itself).
_STANDARD_CACHE: OrderedDict = OrderedDict()
_STANDARD_CACHE_SIZE = 32768


def _cached_standardize(structure: Structure, symprec: float) -> _Standard | None:
    key = (
        symprec,
        structure.lattice.matrix.tobytes(),
        structure.frac_coords.tobytes(),
        tuple(site.specie.symbol for site in structure),
    )
    if key in _STANDARD_CACHE:
        _STANDARD_CACHE.move_to_end(key)
        return _STANDARD_CACHE[key]
    std = _STANDARD_CACHE[key] = _standardize(structure, symprec)
    if len(_STANDARD_CACHE) > _STANDARD_CACHE_SIZE:
        _STANDARD_CACHE.popitem(last=False)
    return std


def _as_p1(structure: Structure) -> _Standard:
    return _Standard(
        number=1,
        lattice=structure.lattice.matrix,
        positions=np.mod(structure.frac_coords, 1.0),
        symbols=[site.specie.symbol for site in structure],
        orbits=np.arange(len(structure)),
    )


class _NotOnTables(Exception):
    """An orbit of the standard cell matches no Wyckoff position (spglib's tolerance vs the tables')."""


def _orbit_position(table: SpaceGroupTable, points: np.ndarray) -> tuple[WyckoffPosition, np.ndarray]:
    """The Wyckoff position of an orbit (most special that fits) and the free values of its representatives."""
    for wp in table.positions:
        if wp.multiplicity != len(points):
            continue
        values = wp.free_values(points)
        if len(values):
            return wp, values
    raise _NotOnTables(f"an orbit of {len(points)} sites fits no Wyckoff position of group {table.number}")


def _assign(
    table: SpaceGroupTable, std: _Standard, positions: np.ndarray
) -> list[tuple[WyckoffPosition, np.ndarray]]:
    """(Wyckoff position, atom indices) of every orbit of the standard cell at `positions`."""
    orbits = []
    for orbit in np.unique(std.orbits):
        members = np.flatnonzero(std.orbits == orbit)
        orbits.append((_orbit_position(table, positions[members])[0], members))
    return orbits


def _lines_for(
    orbits: list[tuple[WyckoffPosition, np.ndarray]],
    symbols: list[str],
    positions: np.ndarray,
    rng: np.random.Generator | None,
) -> list[tuple[int, int, tuple[int, ...], str, str]]:
    """Sort keys + text of every orbit line: (rank, free values in hundredths, Z, element, label, exact values).

    The element comes last so that the order of the lines says nothing about a masked element (infill).

    The representative is the site with the smallest free values, or a random one when `rng` is given.
    """
    lines = []
    for wp, members in orbits:
        values = wp.free_values(positions[members])
        if not len(values):
            raise _NotOnTables(f"an orbit left Wyckoff position {wp.label}")
        hundredths = np.mod(np.round(values * 100).astype(int), 100)
        if rng is None:
            k = min(range(len(hundredths)), key=lambda i: tuple(hundredths[i].tolist()))
        else:
            k = int(rng.integers(len(hundredths)))
        symbol = symbols[members[0]]
        # The unrounded values of the representative come last: only `standard_form` reads them.
        lines.append((wp.rank, tuple(hundredths[k].tolist()), _Z[symbol], symbol, wp.label, tuple(values[k])))
    return sorted(lines)


def _lattice_line(number: int, lattice: np.ndarray) -> str:
    lat = Lattice(lattice)
    values = dict(zip(("a", "b", "c", "alpha", "beta", "gamma"), (*lat.abc, *lat.angles), strict=True))
    return " ".join(
        f"{values[k]:.1f}" if len(k) == 1 else str(round(values[k])) for k in lattice_parameter_names(number)
    )


def _text(number: int, lattice_line: str, lines, permute: np.random.Generator | None = None) -> str:
    order = permute.permutation(len(lines)) if permute is not None else range(len(lines))
    body = []
    for i in order:
        _, values, _, symbol, label, _ = lines[i]
        body.append(" ".join([symbol, label, *(f"0.{v:02d}" for v in values)]))
    return "\n".join([str(number), lattice_line, *body])


def _write(std: _Standard, augment: bool, permute: bool, rng: np.random.Generator) -> str:
    table = space_group_table(std.number)
    lattice_line = _lattice_line(std.number, std.lattice)
    origins = equivalent_origins(table, std.lattice)
    polar = list(table.polar_axes)
    if augment:
        r, t = origins[rng.integers(len(origins))]
        positions = std.positions @ r.T + t
        positions[:, polar] += rng.random(len(polar))
        positions = np.mod(positions, 1.0)
        lines = _lines_for(_assign(table, std, positions), std.symbols, positions, rng)
        return _text(std.number, lattice_line, lines, rng if permute else None)
    return _text(std.number, lattice_line, _canonical_lines(std, origins), rng if permute else None)


def equivalent_origins(table: SpaceGroupTable, lattice: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The proper cosets (R, t) of the group in its Euclidean normalizer that also keep `lattice` (conventional
    cell, vectors as rows): the origins and axis settings that describe one crystal equally well, identity first."""
    metric = lattice @ lattice.T
    return [
        (r, t)
        for r, t in table.alternatives
        if np.allclose(r.T @ metric @ r, metric, rtol=1e-5, atol=1e-5 * metric.max())
    ]


def _canonical_lines(std: _Standard, origins: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple]:
    """The orbit lines of the canonical text: the smallest over the origins and the polar anchors."""
    table = space_group_table(std.number)
    polar = list(table.polar_axes)
    best = None
    for r, t in origins:
        positions = np.mod(std.positions @ r.T + t, 1.0)
        orbits = _assign(table, std, positions)
        anchors = [None]
        if polar:
            # Pin the polar coordinates of one atom to 0; try every atom of the orbits that sort first.
            keys = [(wp.rank, _Z[std.symbols[members[0]]]) for wp, members in orbits]
            first = min(keys)
            anchors = [
                i for key, (_, members) in zip(keys, orbits, strict=True) if key == first for i in members
            ]
        for anchor in anchors:
            shifted = positions
            if anchor is not None:
                shifted = positions.copy()
                shifted[:, polar] = np.mod(shifted[:, polar] - positions[anchor, polar], 1.0)
            lines = _lines_for(orbits, std.symbols, shifted, None)
            if best is None or lines < best:
                best = lines
    return best


def encode(
    structure: Structure,
    *,
    augment: bool = False,
    permute: bool = False,
    seed: int | np.random.Generator | None = None,
    symprec: float = SYMPREC,
) -> str:
    """Write `structure` as Wyckoff text.

    Args:
        structure: an ordered pymatgen structure.
        augment: draw the origin (among the group's proper Euclidean normalizer and along its polar axes)
            and the representative site of each orbit at random, the training-time augmentation; off, the
            text is canonical (the same for every permutation and translation of the structure).
        permute: shuffle the order of the orbit lines (canonical order otherwise).
        seed: seed or numpy Generator for `augment` and `permute`.
        symprec: spglib tolerance in Å; when spglib finds no group there (or its orbits miss the tables),
            0.01 and 0.001 are tried, then the structure is written as P1.

    The standard cells of the last 32,768 structures are cached: drawing augmented texts of a structure
    again (every training epoch) skips spglib.
    """
    rng = as_rng(seed)
    for tolerance in (symprec, *(s for s in _FALLBACK_SYMPREC if s < symprec)):
        std = _cached_standardize(structure, tolerance)
        if std is None:
            continue
        try:
            return _write(std, augment, permute, rng)
        except _NotOnTables:
            continue
    return _write(_as_p1(structure), augment, permute, rng)


def standard_form(structure: Structure, symprec: float = SYMPREC) -> WyckoffText:
    """The canonical Wyckoff description of `structure`, unrounded: what `parse(encode(structure))` holds, with
    the exact lattice parameters and free coordinates instead of 1 and 2 decimals.

    Its `to_structure()` is `decode(encode(structure))` without the rounding: the primitive cell of the same
    setting, origin and representatives, exactly symmetric, the atoms in the same order. A refiner trained
    toward it learns the structure, not the text's rounding. Same tolerances and fallbacks as `encode`.
    """
    for tolerance in (symprec, *(s for s in _FALLBACK_SYMPREC if s < symprec)):
        std = _cached_standardize(structure, tolerance)
        if std is None:
            continue
        try:
            lines = _canonical_lines(std, equivalent_origins(space_group_table(std.number), std.lattice))
        except _NotOnTables:
            continue
        break
    else:
        std = _as_p1(structure)
        lines = _canonical_lines(std, equivalent_origins(space_group_table(1), std.lattice))
    table = space_group_table(std.number)
    lat = Lattice(std.lattice)
    values = dict(zip(("a", "b", "c", "alpha", "beta", "gamma"), (*lat.abc, *lat.angles), strict=True))
    abc, angles = _full_parameters(std.number, [values[k] for k in lattice_parameter_names(std.number)])
    orbits = tuple(
        WyckoffOrbit(symbol, table.by_letter[label[-1]], tuple(float(v) for v in exact))
        for _, _, _, symbol, label, exact in lines
    )
    return WyckoffText(std.number, Lattice.from_parameters(*abc, *angles), orbits)


# --------------------------------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class WyckoffOrbit:
    """One orbit line: element, Wyckoff position and the free coordinates of the representative site."""

    element: str
    position: WyckoffPosition
    values: tuple[float, ...]


@dataclass(frozen=True)
class WyckoffText:
    """A parsed Wyckoff text: space-group number, conventional lattice and orbits."""

    spacegroup: int
    lattice: Lattice
    orbits: tuple[WyckoffOrbit, ...]

    @property
    def labels(self) -> list[str]:
        """The Wyckoff labels of the orbits, in text order."""
        return [orbit.position.label for orbit in self.orbits]

    def transformed(self, rotation: np.ndarray, translation: np.ndarray) -> WyckoffText:
        """The same crystal with every site moved by `x -> rotation @ x + translation` (conventional fractional
        coordinates; e.g. a coset of the group's Euclidean normalizer, `SpaceGroupTable.alternatives`: another
        origin of the same setting). Orbits are relabelled: a new origin can move an orbit to another position
        (1a to 1b in Pm-3m). The lattice is kept, so `rotation` must keep its metric.

        Raises:
            ValueError: a moved orbit lies on no Wyckoff position of the group (the map is no normalizer element).
        """
        table = space_group_table(self.spacegroup)
        orbits = []
        for orbit in self.orbits:
            points = np.mod(orbit.position.sites(orbit.values) @ np.asarray(rotation).T + translation, 1.0)
            try:
                position, values = _orbit_position(table, points)
            except _NotOnTables as err:
                raise ValueError(
                    f"the map does not keep the Wyckoff positions of group {self.spacegroup}: {err}"
                ) from None
            orbits.append(WyckoffOrbit(orbit.element, position, tuple(float(v) for v in values[0])))
        return WyckoffText(self.spacegroup, self.lattice, tuple(orbits))

    def to_structure(self) -> Structure:
        """The primitive cell, every site of every orbit kept (no merging), with site property "wyckoff" and
        `properties` "spacegroup" and "wyckoff" (the labels of the orbit lines)."""
        table = space_group_table(self.spacegroup)
        to_primitive = _PRIMITIVE[table.centering]
        species, coords, labels = [], [], []
        for orbit in self.orbits:
            sites = orbit.position.sites(orbit.values)[orbit.position.primitive_ops]
            species += [orbit.element] * len(sites)
            coords.append(sites)
            labels += [orbit.position.label] * len(sites)
        frac = np.mod(np.concatenate(coords) @ np.linalg.inv(to_primitive), 1.0)
        frac[np.isclose(frac, 1.0, atol=1e-12)] = 0.0
        lattice = Lattice(to_primitive @ self.lattice.matrix)
        structure = Structure(lattice, species, frac, site_properties={"wyckoff": labels})
        structure.properties["spacegroup"] = self.spacegroup
        structure.properties["wyckoff"] = self.labels
        return structure


_LABEL = re.compile(r"(\d+)([a-zA-Z])")


def _floats(fields: list[str], lineno: int, what: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise CrystalParseError(f"{what} must be numbers, got {' '.join(fields)!r}", lineno) from None
    if not all(math.isfinite(v) for v in values):
        raise CrystalParseError(f"{what} must be finite, got {' '.join(fields)!r}", lineno)
    return values


def parse(text: str) -> WyckoffText:
    """Read Wyckoff text; `CrystalParseError` (with the line) for anything that cannot be a crystal."""
    if not isinstance(text, str):
        raise CrystalParseError(f"expected a string, got {type(text).__name__}")
    numbered = [(i, line.split()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(numbered) < 3:
        raise CrystalParseError(
            "expected a space-group line, a lattice line and at least one orbit line (3 lines), "
            f"found {len(numbered)}"
        )
    (sg_no, sg_fields), (lat_no, lat_fields) = numbered[:2]
    if len(sg_fields) != 1 or not sg_fields[0].isdigit():
        raise CrystalParseError(
            f"the first line must be a space-group number, got {' '.join(sg_fields)!r}", sg_no
        )
    number = int(sg_fields[0])
    if not 1 <= number <= 230:
        raise CrystalParseError(f"space-group number must be 1-230, got {number}", sg_no)
    names = lattice_parameter_names(number)
    if len(lat_fields) != len(names):
        raise CrystalParseError(
            f"a {crystal_system(number)} lattice (group {number}) takes {len(names)} parameters "
            f"({' '.join(names)}), found {len(lat_fields)}",
            lat_no,
        )
    abc, angles = _full_parameters(number, _floats(lat_fields, lat_no, "lattice parameters"))
    lattice = _lattice(abc, angles, (lat_no, lat_no))

    table = space_group_table(number)
    orbits = []
    for lineno, fields in numbered[2:]:
        if len(fields) < 2:
            raise CrystalParseError(
                f"an orbit line holds an element, a Wyckoff label and free coordinates, got {' '.join(fields)!r}",
                lineno,
            )
        symbol, label, *values = fields
        if symbol not in _ELEMENTS:
            raise CrystalParseError(f"unknown element symbol {symbol!r}", lineno)
        match = _LABEL.fullmatch(label)
        if not match:
            raise CrystalParseError(
                f"{label!r} is not a Wyckoff label (multiplicity and letter, e.g. 4a)", lineno
            )
        position = table.by_letter.get(match.group(2))
        if position is None:
            raise CrystalParseError(
                f"space group {number} has no Wyckoff position {match.group(2)!r} "
                f"(it has {' '.join(p.label for p in table.positions)})",
                lineno,
            )
        if int(match.group(1)) != position.multiplicity:
            raise CrystalParseError(
                f"Wyckoff position {position.letter} of group {number} has multiplicity "
                f"{position.multiplicity}, not {match.group(1)}",
                lineno,
            )
        if len(values) != position.dof:
            raise CrystalParseError(
                f"Wyckoff position {position.label} of group {number} has {position.dof} free "
                f"coordinate(s), found {len(values)}",
                lineno,
            )
        coords = np.mod(_floats(values, lineno, "free coordinates"), 1.0)
        orbits.append(WyckoffOrbit(symbol, position, tuple(coords.tolist())))
    return WyckoffText(number, lattice, tuple(orbits))


def decode(text: str) -> Structure:
    """Parse Wyckoff text into its primitive cell; raise `CrystalParseError` for anything else.

    Every site of every orbit is kept: coinciding sites (two orbits on one fixed position, a general
    position whose free values put it on a special one) stay, for validity checks to see.
    """
    return parse(text).to_structure()
