"""Training pairs of a Wyckoff-text LLM's refiner: x0 written for x1's formula and space group, atoms paired within
Wyckoff orbits, both in one cell of one setting, so that the flow between them can keep the group.

x1 is a training structure in the Wyckoff convention, unrounded (`hf_crystal.text_wyckoff.standard_form`: the
primitive cell of the standard setting, exactly symmetric). x0 is the LLM's text for x1's formula and space group
under constrained decoding, which meets both by construction. A pair is usable ("orbits") when x0 has x1's
orbits: the same multiset of (element, Wyckoff label), for one of the origins that describe x0 equally well (the
proper cosets of the group's Euclidean normalizer that keep x0's lattice; an origin shift can move an orbit from
1a to 1b, and the per-orbit assignment cannot undo it). Among those origins the one with the smallest transport
cost is kept, and in polar groups x0 is also shifted along the polar axes by the mean displacement. Within each
class the orbits are paired by an optimal assignment (`scipy.optimize.linear_sum_assignment`), and two paired
orbits site by site: both expanded by the same operations of their Wyckoff position from representatives chosen
to minimise the squared torus displacements. Such a pairing is equivariant: every operation of the group moves
the atoms of x0 and x1 by the same permutation, so the interpolant between them keeps the group.

Pairs whose orbits differ fall back to matching atoms by element in the shared cell (`matched` "elements"); the
training leaves them out unless asked. Both structures are then put in x0's Niggli-reduced cell (the cell the
refiner integrates at inference), or x1's where x1's angles would leave the refiner's interval in x0's.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Features, Value
from datasets import Sequence as FeatureSequence
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.optimize import linear_sum_assignment

from hf_crystal.constraints_wyckoff import ConstraintError, WyckoffConstraint
from hf_crystal.prompts import format_formula
from hf_crystal.refiner.batching import niggli_reduced
from hf_crystal.refiner.manifold import ANGLE_MAX, ANGLE_MIN
from hf_crystal.symmetry import SymmetryError, SymmetryOperations, SymmetryProjector, operations_in_cell
from hf_crystal.text import CrystalParseError, encode
from hf_crystal.text_wyckoff import (
    WyckoffOrbit,
    WyckoffText,
    equivalent_origins,
    parse,
    primitive_basis,
    space_group_table,
    standard_form,
)
from hf_crystal.text_wyckoff import decode as decode_wyckoff
from hf_crystal.training.pairs import assign_atoms, transport_cost

__all__ = [
    "WYCKOFF_FEATURES",
    "OrbitPairing",
    "group_operations",
    "orbit_classes",
    "pair_operations",
    "pair_orbits",
    "wyckoff_pair",
]

WYCKOFF_FEATURES = Features(
    {
        "material_id": Value("string"),
        "x1": Value("string"),
        "llm_text": Value("string"),
        "x0": Value("string"),
        "error": Value("string"),
        "matched": Value("string"),  # "orbits", "elements" (x0's orbits differ) or None (no x0)
        "spacegroup": Value("int32"),
        "cell": FeatureSequence(
            Value("float64")
        ),  # the pair's cell vectors in conventional units (3x3, rows)
        "origin": Value("int32"),  # which of x0's equivalent origins was kept (0: as written)
        "x1_roundtrip": Value("bool"),  # decode(encode(x1)) matches x1 (StructureMatcher, stol 0.1)
        "target_asymmetry": Value("float64"),  # how far the velocity target is from symmetric (0: exactly)
        "cost_xyz": Value(
            "float64"
        ),  # `pairs.py`'s pairing of the same two crystals: Niggli cells, by element
        "cost_assigned": Value("float64"),  # this pair's transport cost (`pairs.transport_cost`)
        "seconds": Value("float64"),  # pairing time of all samples tried (the LLM's time not included)
        "attempt": Value("int32"),  # which of the LLM's samples for x1 was kept (0: the first)
    }
)
# x1 angles (degrees) kept this far inside the refiner's interval in the pair's cell.
_ANGLE_MARGIN = 0.5
_MATCHER = StructureMatcher(stol=0.1)


def orbit_classes(text: WyckoffText) -> Counter:
    """The multiset of (element, Wyckoff label) of a text's orbits."""
    return Counter((orbit.element, orbit.position.label) for orbit in text.orbits)


def _torus(d: np.ndarray) -> np.ndarray:
    return d - np.round(d)


def _representatives(orbit: WyckoffOrbit) -> np.ndarray:
    """Free values of every site of the orbit that lies on its position's representative form, `(k, dof)`."""
    position = orbit.position
    if not position.dof:
        return np.zeros((1, 0))
    values = position.free_values(np.mod(position.sites(orbit.values), 1.0))
    return np.unique(np.round(values, 9) % 1.0, axis=0)


def _sites(position, values, to_primitive: np.ndarray) -> np.ndarray:
    """The orbit's sites in the primitive cell, in `WyckoffText.to_structure`'s order."""
    return position.sites(values)[position.primitive_ops] @ to_primitive


@dataclass
class OrbitPairing:
    """x0 re-expressed so that `x0.to_structure()` pairs site by site with `x1.to_structure()`.

    Args:
        x0 (`WyckoffText`): x0's orbits in x1's order, each from the representative its pairing chose.
        origin (`int`): Index of the origin of x0 kept, in `equivalent_origins` order (0: as written).
        cost (`float`): Sum of squared torus displacements (primitive fractional coordinates).
    """

    x0: WyckoffText
    origin: int
    cost: float


def _match(x0: WyckoffText, x1: WyckoffText) -> OrbitPairing:
    """Orbits of each (element, label) class paired optimally, each pair from its best representative of x0."""
    to_primitive = np.linalg.inv(primitive_basis(x1.spacegroup))
    classes = defaultdict(lambda: ([], []))
    for i, orbit in enumerate(x0.orbits):
        classes[orbit.element, orbit.position.label][0].append(i)
    for j, orbit in enumerate(x1.orbits):
        classes[orbit.element, orbit.position.label][1].append(j)
    paired: list[WyckoffOrbit | None] = [None] * len(x1.orbits)
    total = 0.0
    for members0, members1 in classes.values():
        cost = np.zeros((len(members1), len(members0)))
        choice = np.zeros((len(members1), len(members0)), dtype=int)
        candidates = [_representatives(x0.orbits[i]) for i in members0]
        for a, j in enumerate(members1):
            position = x1.orbits[j].position
            target = _sites(position, x1.orbits[j].values, to_primitive)
            for b, reps in enumerate(candidates):
                costs = [(_torus(_sites(position, rep, to_primitive) - target) ** 2).sum() for rep in reps]
                choice[a, b] = int(np.argmin(costs))
                cost[a, b] = costs[choice[a, b]]
        rows, cols = linear_sum_assignment(cost)
        for a, b in zip(rows, cols, strict=True):
            orbit = x0.orbits[members0[b]]
            values = tuple(float(v) for v in candidates[b][choice[a, b]])
            paired[members1[a]] = WyckoffOrbit(orbit.element, orbit.position, values)
            total += float(cost[a, b])
    return OrbitPairing(WyckoffText(x1.spacegroup, x0.lattice, tuple(paired)), 0, total)


def _polar_shifts(x0: WyckoffText, x1: WyckoffText) -> list[np.ndarray]:
    """Shifts of x0 along the group's polar axes (conventional fractional) worth trying: any such shift keeps the
    group, so each one that puts a site of x0 on a site of x1 of the same class (the class with fewest sites),
    each followed by the shift that then centres the displacements."""
    polar = list(space_group_table(x1.spacegroup).polar_axes)
    if not polar:
        return [np.zeros(3)]
    sizes = Counter()
    for orbit in x1.orbits:
        sizes[orbit.element, orbit.position.label] += orbit.position.multiplicity
    cls = min(sizes, key=lambda c: (sizes[c], c))
    anchor = next(o for o in x0.orbits if (o.element, o.position.label) == cls)
    start = anchor.position.sites(anchor.values)[0]
    shifts = []
    for orbit in x1.orbits:
        if (orbit.element, orbit.position.label) != cls:
            continue
        for site in orbit.position.sites(orbit.values):
            shift = np.zeros(3)
            shift[polar] = _torus(site - start)[polar]
            shifts.append(shift)
    # Then the shift that centres the displacements of each such pairing.
    to_primitive = np.linalg.inv(primitive_basis(x1.spacegroup))
    target = x1.to_structure().frac_coords
    refined = []
    for shift in shifts:
        pairing = _match(x0.transformed(np.eye(3), shift), x1)
        d = _torus(target - pairing.x0.to_structure().frac_coords).mean(axis=0) @ np.linalg.inv(to_primitive)
        extra = np.zeros(3)
        extra[polar] = d[polar]
        refined.append(shift + extra)
    return shifts + refined


def pair_orbits(x0: WyckoffText, x1: WyckoffText) -> OrbitPairing | None:
    """x0 paired orbit by orbit with x1 (same group), over x0's equivalent origins; None when no origin gives x0
    x1's (element, Wyckoff label) multiset."""
    if x0.spacegroup != x1.spacegroup:
        return None
    table = space_group_table(x1.spacegroup)
    target = orbit_classes(x1)
    best = None
    for index, (rotation, translation) in enumerate(equivalent_origins(table, x0.lattice.matrix)):
        try:
            moved = x0.transformed(rotation, translation)
        except ValueError:
            continue
        if orbit_classes(moved) != target:
            continue
        pairing = min(
            (_match(moved.transformed(np.eye(3), shift), x1) for shift in _polar_shifts(moved, x1)),
            key=lambda p: p.cost,
        )
        pairing.origin = index
        if best is None or pairing.cost < best.cost:
            best = pairing
    return best


def _niggli_matrix(structure: Structure) -> np.ndarray:
    """Integer M with M @ lattice = the Niggli-reduced lattice `niggli_reduced` gives (identity if it cannot)."""
    reduced = niggli_reduced(structure).lattice.matrix
    m = reduced @ np.linalg.inv(structure.lattice.matrix)
    if not np.allclose(m, np.round(m), atol=1e-6):
        return np.eye(3)
    return np.round(m)


def _in_cell(structure: Structure, m: np.ndarray) -> Structure:
    """`structure` in the cell whose vectors are `m @ lattice` (same crystal, same atom order)."""
    return Structure(
        Lattice(m @ structure.lattice.matrix),
        structure.species,
        np.mod(structure.frac_coords @ np.linalg.inv(m), 1.0),
    )


def _angles_fit(structure: Structure) -> bool:
    angles = np.array(structure.lattice.angles)
    return bool(((angles > ANGLE_MIN + _ANGLE_MARGIN) & (angles < ANGLE_MAX - _ANGLE_MARGIN)).all())


def group_operations(number: int, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations `(k, 3, 3)` (integer) and translations `(k, 3)` of space group `number` in the cell whose vectors
    are the rows of `cell` in conventional units; one operation per coset of the cell's lattice translations."""
    general = space_group_table(number).positions[-1]
    basis = np.asarray(cell, dtype=float).reshape(3, 3).T  # conventional = basis @ cell coordinates (columns)
    inverse = np.linalg.inv(basis)
    rotations = inverse @ general.rotations @ basis
    translations = general.translations @ inverse.T
    keep = general.primitive_ops  # operations that differ by a centering vector are one in a primitive cell
    return np.round(rotations[keep]).astype(int), np.mod(translations[keep], 1.0)


def pair_operations(structure: Structure, number: int, cell: Sequence[float]) -> SymmetryOperations:
    """The operations of group `number` on a pair's x1 (`structure`, in `cell`) with their atom maps, which the
    orbit pairing makes the same on x0."""
    rotations, translations = group_operations(number, np.asarray(cell))
    return operations_in_cell(structure, rotations, translations, number)


def _asymmetry(x0: Structure, x1: Structure, operations: SymmetryOperations) -> float:
    """Largest change the velocity projection makes to the pair's coordinate velocity target (fractional)."""
    import torch

    d = _torus(x1.frac_coords - x0.frac_coords)
    d = torch.as_tensor(d - d.mean(axis=0))
    projected = SymmetryProjector([operations], [len(x1)]).project_velocity(d)
    return float((projected - d).abs().max())


def wyckoff_pair(material_id: str, x1: WyckoffText, llm_text: str, original: Structure) -> dict:
    """One row of `WYCKOFF_FEATURES`: the LLM's text paired with x1 (`standard_form` of `original`)."""
    began = time.perf_counter()
    x1_structure = x1.to_structure()
    row = {
        "material_id": material_id,
        "llm_text": llm_text,
        "spacegroup": x1.spacegroup,
        "x1_roundtrip": bool(_MATCHER.fit(original, decode_wyckoff(encode(original, format="wyckoff")))),
    }
    empty = {"x0": None, "matched": None, "cell": None, "origin": None, "target_asymmetry": None}
    empty |= {"cost_xyz": None, "cost_assigned": None}
    try:
        x0 = parse(llm_text)
        if x0.spacegroup != x1.spacegroup:
            raise CrystalParseError(f"the LLM wrote group {x0.spacegroup}, not {x1.spacegroup}")
        x0_structure = x0.to_structure()
        if x0_structure.composition != x1_structure.composition:
            raise CrystalParseError(f"the LLM wrote {x0_structure.composition.formula}, not x1's")
    except CrystalParseError as err:
        return {**row, **empty, "x1": x1_structure.to(fmt="json"), "error": str(err), "seconds": None}
    pairing = pair_orbits(x0, x1)
    origin = None
    if pairing is not None:
        paired, matched, origin = pairing.x0.to_structure(), "orbits", pairing.origin
    else:
        order = assign_atoms(x0_structure, x1_structure)  # by element, in the shared cell
        species = [x0_structure[i].specie for i in order]
        paired, matched = (
            Structure(x0_structure.lattice, species, x0_structure.frac_coords[order]),
            "elements",
        )
    m = _niggli_matrix(paired)
    if not _angles_fit(_in_cell(x1_structure, m)):
        m = _niggli_matrix(x1_structure)
    x0_cell, x1_cell = _in_cell(paired, m), _in_cell(x1_structure, m)
    cell = m @ primitive_basis(x1.spacegroup)
    asymmetry = None
    if matched == "orbits":
        try:
            asymmetry = _asymmetry(x0_cell, x1_cell, pair_operations(x1_cell, x1.spacegroup, cell.ravel()))
        except SymmetryError:
            asymmetry = float("inf")
    xyz0, xyz1 = niggli_reduced(x0_structure), niggli_reduced(x1_structure)
    return {
        **row,
        "x1": x1_cell.to(fmt="json"),
        "x0": x0_cell.to(fmt="json"),
        "error": None,
        "matched": matched,
        "cell": cell.ravel().tolist(),
        "origin": origin,
        "target_asymmetry": asymmetry,
        "cost_xyz": transport_cost(xyz0, xyz1, assign_atoms(xyz0, xyz1)),
        "cost_assigned": transport_cost(x0_cell, x1_cell),
        "seconds": time.perf_counter() - began,
    }


def wyckoff_pair_rows(pipe, ids, structures, settings, shard: int) -> list[dict]:
    """`pairs.build_pairs`' rows for a Wyckoff-text LLM: x0 written for each x1's formula and space group."""
    targets = [standard_form(s) for s in structures]
    rows: list[dict | None] = [None] * len(ids)
    asked = []
    for k, (material_id, x1) in enumerate(zip(ids, targets, strict=True)):
        x1_structure = x1.to_structure()
        composition = {el.symbol: int(n) for el, n in x1_structure.composition.items()}
        try:  # x1 itself meets the request, so this cannot fail; never drop a structure silently if it does
            WyckoffConstraint(spacegroup=x1.spacegroup, composition=composition, max_sites=len(x1_structure))
        except ConstraintError as err:
            rows[k] = {name: None for name in WYCKOFF_FEATURES} | {
                "material_id": material_id,
                "x1": x1_structure.to(fmt="json"),
                "spacegroup": x1.spacegroup,
                "error": str(err),
            }
            continue
        asked.append(k)
    conditions = [
        {
            "formula": format_formula(targets[k].to_structure().composition),
            "spacegroup": targets[k].spacegroup,
        }
        for k in asked
    ]
    groups = (
        pipe(
            conditions,
            num_return_sequences=settings.attempts,
            batch_size=settings.batch_size,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_sites=max((len(targets[k].to_structure()) for k in asked), default=1),
            formula_units="cell",  # x0 has x1's atoms (the primitive cell's)
            seed=settings.seed * 1_000_003 + shard,
        )
        if asked
        else []
    )
    for k, samples in zip(asked, groups, strict=True):
        tried = []
        for attempt, sample in enumerate(samples):
            tried.append(
                {**wyckoff_pair(ids[k], targets[k], sample["text"], structures[k]), "attempt": attempt}
            )
            if tried[-1]["matched"] == "orbits":
                break
        kept = next((row for row in tried if row["matched"] == "orbits"), tried[0])
        if kept["seconds"] is not None:  # the pairing time of every sample tried
            kept["seconds"] = sum(row["seconds"] or 0.0 for row in tried)
        rows[k] = kept
    return rows
