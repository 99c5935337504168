"""Validity rules on hand-made structures (CDVAE conventions)."""

from factories import rocksalt
from pymatgen.core import Lattice, Structure

from hf_crystal.evaluation.validity import (
    composition_validity,
    min_interatomic_distance,
    structure_validity,
    validity_flags,
)


def test_rocksalt_is_valid():
    assert validity_flags(rocksalt()) == {"struct_valid": True, "comp_valid": True, "valid": True}


def test_atoms_0_3_angstrom_apart_are_structurally_invalid():
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.3 / 5.0, 0, 0]])
    assert abs(min_interatomic_distance(s) - 0.3) < 1e-9
    assert not structure_validity(s)
    assert validity_flags(s)["valid"] is False
    assert structure_validity(s, min_distance=0.25)


def test_close_periodic_images_count():
    """One atom in a 0.3 Å cell is 0.3 Å from its own image (CDVAE's distance matrix misses this)."""
    assert not structure_validity(Structure(Lattice.cubic(0.3), ["Fe"], [[0, 0, 0]]))
    assert not structure_validity(Structure(Lattice.tetragonal(4.0, 0.4), ["Fe"], [[0, 0, 0]]))


def test_wrapped_neighbours_across_the_boundary():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.01, 0, 0], [0.99, 0, 0]])
    assert abs(min_interatomic_distance(s) - 0.08) < 1e-9
    assert not structure_validity(s)


def test_tiny_volume_is_invalid():
    s = Structure(Lattice.from_parameters(3, 3, 3, 89.0, 89.0, 177.9), ["Fe"], [[0, 0, 0]])
    assert s.volume < 0.5
    assert not structure_validity(s, min_distance=0.0, min_volume=0.5)


def test_impossible_charge_balance_is_compositionally_invalid():
    assert not composition_validity(
        Structure(Lattice.cubic(5), ["Na", "F", "F"], [[0, 0, 0], [0.5] * 3, [0.2] * 3])
    )
    assert composition_validity(Structure(Lattice.cubic(5), ["Na", "F"], [[0, 0, 0], [0.5] * 3]))


def test_alloys_and_elements_are_compositionally_valid():
    assert composition_validity(Structure(Lattice.cubic(3), ["Cu", "Zn"], [[0, 0, 0], [0.5] * 3]))
    assert composition_validity(Structure(Lattice.cubic(3), ["O"], [[0, 0, 0]]))
