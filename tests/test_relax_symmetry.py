"""Relaxation that keeps each structure's space group (BatchedRelaxer(fix_symmetry=True), ASE FixSymmetry)."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet")

from hf_crystal.evaluation.relax import BatchedRelaxer, RelaxationError, structure_key  # noqa: E402
from hf_crystal.symmetry import space_group  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False, use_device="cpu")


def perturbed_perovskite() -> Structure:
    ideal = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.95), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )
    rng = np.random.default_rng(0)
    lattice = Lattice(ideal.lattice.matrix + rng.normal(0, 0.002, (3, 3)))
    cart = ideal.cart_coords + rng.normal(0, 0.01, (len(ideal), 3))
    return Structure(lattice, ideal.species, cart, coords_are_cartesian=True)


def rattled_salt() -> Structure:
    rng = np.random.default_rng(1)
    s = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    return Structure(
        s.lattice, s.species, s.cart_coords + rng.normal(0, 0.1, (2, 3)), coords_are_cartesian=True
    )


def test_fix_symmetry_keeps_pm3m_in_a_mixed_batch(model):
    perovskite = perturbed_perovskite()
    assert space_group(perovskite, 0.1) == 221 and space_group(perovskite, 1e-3) != 221
    batch = [rattled_salt(), perovskite]
    kept = BatchedRelaxer(model, fix_symmetry=True, max_steps=6, batch_size=2).relax(batch, progress=False)
    free = BatchedRelaxer(model, max_steps=6, batch_size=2).relax(batch, progress=False)
    assert all(r.error is None for r in [*kept, *free])
    assert space_group(kept[1].structure, 1e-3) == 221
    assert space_group(free[1].structure, 1e-3) != 221
    assert kept[1].structure.composition == perovskite.composition


def test_symmetry_settings_are_part_of_the_cache_key(model):
    s = perturbed_perovskite()
    free, kept = BatchedRelaxer(model), BatchedRelaxer(model, fix_symmetry=True)
    tighter = BatchedRelaxer(model, fix_symmetry=True, symprec=0.01)
    keys = {structure_key(s, r.settings) for r in (free, kept, tighter)}
    assert len(keys) == 3
    assert "fix_symmetry" not in free.settings  # free relaxations keep their existing cache entries
    with pytest.raises(RelaxationError, match="symprec"):
        BatchedRelaxer(model, fix_symmetry=True, symprec=0)
