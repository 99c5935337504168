"""Crystal structures as text and back, in one of two formats (`CRYSTAL_FORMATS`).

"xyz", the default, is the format of Gruver et al. (2024); "wyckoff" writes the space group, the free
lattice parameters and one line per Wyckoff orbit (`hf_crystal.text_wyckoff`). The xyz format, one value
group per line::

    4.2 4.2 4.2        lattice lengths a b c in Å, 1 decimal
    90 90 90           angles alpha beta gamma in degrees, integers
    Na                 element symbol of site 1
    0.00 0.00 0.00     fractional coordinates of site 1, 2 decimals, in [0, 1)

In both formats `decode` accepts anything a language model can write: it returns a `Structure` or raises
`CrystalParseError` naming the offending line and the reason.
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from hf_crystal.crystal_format import CRYSTAL_FORMATS, DEFAULT_FORMAT, check_format

__all__ = [
    "CRYSTAL_FORMATS",
    "DEFAULT_FORMAT",
    "ELEMENT_SYMBOLS",
    "CrystalParseError",
    "DisorderedStructureError",
    "as_rng",
    "check_format",
    "decode",
    "encode",
    "try_decode",
]

#: The 118 element symbols a crystal text may contain (pymatgen's isotopes D and T are not among them).
ELEMENT_SYMBOLS: tuple[str, ...] = tuple(Element.from_Z(z).symbol for z in range(1, 119))
_ELEMENTS = frozenset(ELEMENT_SYMBOLS)

# Lattice lengths a cell may have, in Å: beyond them floating point no longer holds the cell (squares
# underflow or overflow) and no crystal has such a cell.
LENGTH_RANGE = (1e-2, 1e4)
# Smallest cell volume, in units of a*b*c, that still counts as a cell: below it the three lattice
# vectors are (numerically) coplanar and fractional coordinates lose their meaning.
_MIN_REDUCED_VOLUME = 1e-6


class CrystalParseError(ValueError):
    """Text that does not describe a crystal; `line` is the 1-based line number, if one is at fault."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class DisorderedStructureError(ValueError):
    """A structure with partial occupancies: the text format holds one element per site."""


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed, an existing Generator (used as is) or None (fresh entropy)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def encode(
    structure: Structure,
    *,
    format: str = DEFAULT_FORMAT,
    translate: str | np.ndarray | list[float] | None = None,
    permute: bool = False,
    seed: int | np.random.Generator | None = None,
) -> str:
    """Write `structure` as crystal text.

    Args:
        structure: an ordered pymatgen structure.
        format: "xyz" or "wyckoff" (`CRYSTAL_FORMATS`).
        translate: None (as is), "random" (the training augmentation) or, for "xyz", a fractional shift
            vector. "xyz": "random" is one uniform fractional shift of all sites, coordinates are wrapped
            into [0, 1). "wyckoff": None writes the canonical text, "random" draws the origin and the
            representative site of each orbit.
        permute: shuffle the order of the sites ("xyz") or of the orbit lines ("wyckoff").
        seed: seed or numpy Generator for "random" translation and permutation.
    """
    if not structure.is_ordered:
        raise DisorderedStructureError(
            f"{structure.composition.formula} has partial occupancies; the crystal text format holds one "
            "element per site. Order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation."
        )
    if len(structure) == 0:
        raise ValueError("cannot encode a structure without sites")
    if check_format(format) == "wyckoff":
        from hf_crystal import text_wyckoff

        if translate is not None and not (isinstance(translate, str) and translate == "random"):
            raise ValueError(
                f"the Wyckoff text fixes the origin: translate must be None or 'random', got {translate!r}"
            )
        return text_wyckoff.encode(structure, augment=translate is not None, permute=permute, seed=seed)
    rng = as_rng(seed)
    frac = structure.frac_coords
    if isinstance(translate, str):
        if translate != "random":
            raise ValueError(f"translate must be None, 'random' or a 3-vector, got {translate!r}")
        frac = frac + rng.random(3)
    elif translate is not None:
        shift = np.asarray(translate, dtype=float)
        if shift.shape != (3,):
            raise ValueError(f"translate vector must have 3 components, got shape {shift.shape}")
        frac = frac + shift
    # Round before wrapping so that 0.996 is written 0.00, not 1.00; "+ 0.0" turns -0.0 into 0.0.
    frac = np.round(frac, 2) % 1.0 + 0.0
    order = rng.permutation(len(structure)) if permute else np.arange(len(structure))

    lat = structure.lattice
    lines = [
        " ".join(f"{x:.1f}" for x in lat.abc),
        " ".join(str(round(x)) for x in lat.angles),
    ]
    for i in order:
        lines.append(structure[i].specie.symbol)
        lines.append(" ".join(f"{x:.2f}" for x in frac[i]))
    return "\n".join(lines)


def _numbers(line: str, lineno: int, what: str) -> list[float]:
    fields = line.split()
    if len(fields) != 3:
        raise CrystalParseError(f"expected 3 {what}, found {len(fields)} fields in {line.strip()!r}", lineno)
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise CrystalParseError(f"{what} must be numbers, got {line.strip()!r}", lineno) from None
    if not all(math.isfinite(v) for v in values):
        raise CrystalParseError(f"{what} must be finite, got {line.strip()!r}", lineno)
    return values


def _lattice(abc: list[float], angles: list[float], linenos: tuple[int, int]) -> Lattice:
    """A lattice from lengths and angles, or CrystalParseError for a triple that gives no cell."""
    if min(abc) <= 0:
        raise CrystalParseError(f"lattice lengths must be positive, got {abc}", linenos[0])
    if not all(LENGTH_RANGE[0] <= x <= LENGTH_RANGE[1] for x in abc):
        raise CrystalParseError(
            f"lattice lengths must lie between {LENGTH_RANGE[0]} and {LENGTH_RANGE[1]:g} Å, got {abc}",
            linenos[0],
        )
    if not all(0 < x < 180 for x in angles):
        raise CrystalParseError(
            f"lattice angles must lie strictly between 0 and 180 degrees, got {angles}", linenos[1]
        )
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    # Volume of the cell divided by a*b*c: zero or imaginary when the angles cannot close a cell.
    reduced_volume_sq = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    if reduced_volume_sq <= _MIN_REDUCED_VOLUME**2:
        raise CrystalParseError(
            f"angles {angles} do not form a cell (no three vectors have them)", linenos[1]
        )
    return Lattice.from_parameters(*abc, *angles)


def decode(text: str, format: str = DEFAULT_FORMAT) -> Structure:
    """Parse crystal text into a `Structure`; raise `CrystalParseError` for anything else.

    Blank lines and surrounding spaces are ignored; coordinates outside [0, 1) are wrapped. A "wyckoff"
    text decodes to its primitive cell, with site property "wyckoff" (the label of each site's orbit) and
    `properties["spacegroup"]`.

    Args:
        text (`str`): What a model wrote (the completion, without the prompt).
        format (`str`): The text format, one of `CRYSTAL_FORMATS`.
    """
    if check_format(format) == "wyckoff":
        from hf_crystal import text_wyckoff

        return text_wyckoff.decode(text)
    if not isinstance(text, str):
        raise CrystalParseError(f"expected a string, got {type(text).__name__}")
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(numbered) < 4:
        raise CrystalParseError(
            f"expected a lengths line, an angles line and at least one site (4 lines), found {len(numbered)}"
        )
    if len(numbered) % 2:
        raise CrystalParseError(
            f"{len(numbered)} non-empty lines: after the 2 lattice lines each site takes 2 lines "
            "(element, coordinates); the last site is incomplete",
            numbered[-1][0],
        )
    abc = _numbers(numbered[0][1], numbered[0][0], "lattice lengths")
    angles = _numbers(numbered[1][1], numbered[1][0], "lattice angles")
    lattice = _lattice(abc, angles, (numbered[0][0], numbered[1][0]))

    species, coords = [], []
    for (el_no, el_line), (xyz_no, xyz_line) in zip(numbered[2::2], numbered[3::2], strict=True):
        symbol = el_line.strip()
        if symbol not in _ELEMENTS:
            raise CrystalParseError(f"unknown element symbol {symbol!r}", el_no)
        species.append(symbol)
        coords.append(_numbers(xyz_line, xyz_no, "fractional coordinates"))
    return Structure(lattice, species, np.mod(coords, 1.0))


def try_decode(text: str, format: str = DEFAULT_FORMAT) -> tuple[Structure | None, CrystalParseError | None]:
    """`decode` for bulk use: (structure, None) on success, (None, error) otherwise."""
    check_format(format)
    try:
        return decode(text, format), None
    except CrystalParseError as err:
        return None, err
