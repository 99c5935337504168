"""Structures built in the tests themselves (no data files needed)."""

from __future__ import annotations

import functools

import numpy as np
from pymatgen.core import Lattice, Structure


@functools.cache
def _rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt() -> Structure:
    """NaCl, cubic Fm-3m, 8 atoms in the conventional cell (a fresh copy: from_spacegroup is slow)."""
    return _rocksalt().copy()


def sodium_nitride() -> Structure:
    """Na3N (anti-ReO3, cubic Pm-3m): an N site beside Na sites, the case str.replace masking breaks."""
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.82), ["N", "Na"], [[0, 0, 0], [0.5, 0, 0]])


def structures() -> dict[str, Structure]:
    """Named structures across crystal systems, from 1 to 64 atoms."""
    rng = np.random.default_rng(7)
    monoclinic = Structure(
        Lattice.monoclinic(5.1, 6.3, 7.2, 103.7), ["Zr", "Zr", "O", "O", "O", "O"], rng.random((6, 3))
    )
    triclinic = Structure(
        Lattice.from_parameters(4.4, 5.7, 6.9, 81.3, 75.2, 102.9),
        ["Ca", "Al", "Si", "Si", "O", "O", "O", "O", "O"],
        rng.random((9, 3)),
    )
    return {
        "polonium (1 atom)": Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]),
        "CsCl (cubic)": Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "NaCl (cubic, 8)": rocksalt(),
        "Na3N (cubic)": sodium_nitride(),
        "ZnO (hexagonal)": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
        ),
        "graphite (hexagonal)": Structure.from_spacegroup(
            "P6_3/mmc", Lattice.hexagonal(2.46, 6.71), ["C", "C"], [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]]
        ),
        "ZrO2 (monoclinic)": monoclinic,
        "CaAl silicate (triclinic)": triclinic,
        "SrTiO3 3x3x3 (135 atoms)": Structure.from_spacegroup(
            "Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
        )
        * (3, 3, 3),
        "NaCl 2x2x2 (64 atoms)": rocksalt() * (2, 2, 2),
    }
