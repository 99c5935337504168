"""Structural and compositional validity (CDVAE, Xie et al. 2022).

Conventions follow CDVAE's ``eval_utils.py``: a structure is valid when no two atoms are closer than
0.5 Å and the cell is at least 0.1 Å^3; a composition is valid when SMACT finds a charge-neutral
assignment of oxidation states that passes the Pauling electronegativity test, with single elements and
all-metal compositions (alloys) counted as valid. Deviation: the shortest distance also includes each
atom's distance to its own periodic images (CDVAE's distance matrix skips it), so a cell shorter than
0.5 Å along a lattice vector is invalid too.

Light on purpose: the generation pipeline flags every sample with it, so SMACT is imported only when a
composition is first checked.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

# CDVAE (Xie et al. 2022), eval_utils.structure_validity: thresholds for MP-20.
MIN_INTERATOMIC_DISTANCE = 0.5  # Å
MIN_CELL_VOLUME = 0.1  # Å^3
# CDVAE used SMACT's 2014 oxidation-state list (smact < 3 default); SMACT >= 3 defaults to ICSD24.
SMACT_OXIDATION_STATES = "smact14"


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance between any two atoms, periodic images included (Å)."""
    dmat = structure.distance_matrix.copy()
    np.fill_diagonal(dmat, np.inf)
    # An atom's distance to its own nearest image is the shortest non-zero lattice vector.
    self_image = _shortest_lattice_vector(structure.lattice.matrix)
    return float(min(dmat.min(initial=np.inf), self_image))


def _shortest_lattice_vector(matrix: np.ndarray) -> float:
    """Length of the shortest non-zero lattice vector (search over a small integer box on the LLL basis)."""
    reduced = Lattice(matrix).get_lll_reduced_lattice().matrix
    rng = np.arange(-2, 3)
    ijk = np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T
    ijk = ijk[np.any(ijk != 0, axis=1)]
    return float(np.linalg.norm(ijk @ reduced, axis=1).min())


def structure_validity(
    structure: Structure,
    min_distance: float = MIN_INTERATOMIC_DISTANCE,
    min_volume: float = MIN_CELL_VOLUME,
) -> bool:
    """True when all atoms are at least ``min_distance`` apart and the cell volume is >= ``min_volume``."""
    if not np.isfinite(structure.lattice.matrix).all() or structure.volume < min_volume:
        return False
    return min_interatomic_distance(structure) >= min_distance


def composition_validity(composition: Composition | Structure) -> bool:
    """SMACT charge neutrality + Pauling electronegativity test, alloys and elements valid (CDVAE rules)."""
    if isinstance(composition, Structure):
        composition = composition.composition
    composition = Composition(composition).element_composition
    if len(composition.elements) == 1:
        return True
    from smact.screening import smact_validity

    counts = composition.get_el_amt_dict()
    if any(abs(v - round(v)) > 1e-6 for v in counts.values()):
        # Partial occupancies have no integer stoichiometry to balance.
        return False
    try:
        return bool(
            smact_validity(
                composition,
                use_pauling_test=True,
                include_alloys=True,
                oxidation_states_set=SMACT_OXIDATION_STATES,
            )
        )
    except KeyError:  # SMACT has no data for some superheavy elements (e.g. Ts): no charge balance to find
        return False


def validity_flags(structure: Structure) -> dict[str, bool]:
    """Per-structure flags: ``struct_valid``, ``comp_valid`` and their conjunction ``valid``."""
    struct_ok = structure_validity(structure)
    comp_ok = composition_validity(structure)
    return {"struct_valid": struct_ok, "comp_valid": comp_ok, "valid": struct_ok and comp_ok}
