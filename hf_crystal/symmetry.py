"""Space groups of crystals, their symmetry operations in the crystal's own cell, and projections onto the
structures that keep them.

The projections are those of DiffCSP++ (Jiao et al. 2024) and of ASE's `ase.spacegroup.symmetrize.refine_symmetry`,
written for a batch of crystals in the refiner's flat layout (atoms of all crystals stacked, see
`hf_crystal.refiner.batching`): fractional coordinates are averaged over the images that the operations and
their atom maps give, the lattice metric over `W^T M W`. The cell and the atoms never change (unlike
`SpacegroupAnalyzer.get_refined_structure`, which changes both).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import spglib
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pymatgen.symmetry.groups import SpaceGroup
from spglib.error import SpglibError

from hf_crystal.refiner.manifold import (
    lattice_to_unconstrained,
    torus_displacement,
    unconstrained_to_lattice,
    wrap,
)

__all__ = [
    "CRYSTAL_SYSTEMS",
    "GENERATION_CASES",
    "KEPT_AS_WRITTEN",
    "REFINE_CASES",
    "RETRIED_CASES",
    "SYMMETRIZE_CASES",
    "SymmetrizedBatch",
    "SymmetryError",
    "SymmetryOperations",
    "SymmetryProjector",
    "crystal_system",
    "operations_in_cell",
    "project_structure",
    "space_group",
    "structurally_valid",
    "symmetrize",
    "symmetrize_structures",
    "symmetry_operations",
]

# Default spglib angle tolerance (degrees), as pymatgen's SpacegroupAnalyzer.
ANGLE_TOLERANCE = 5.0
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
# How `symmetrize` ended: operations found and kept at the tolerance, at a tenth of it, at a hundredth, or not at
# all (the structure is left as it is and the flow runs without a projection).
SYMMETRIZE_CASES = ("tolerance", "tolerance/10", "tolerance/100", "plain")
# How the symmetry-preserving refiner ended (`CrystalRefinerPipeline`): a `SYMMETRIZE_CASES` case, or, for a
# structure whose refined output was structurally invalid (two atoms closer than 0.5 Å or a cell under 0.1 Å^3), the
# rung of the ladder below it at which it was refined again (its output is invalid once more only in the last).
RETRIED_CASES = ("tolerance/10 (retried)", "tolerance/100 (retried)", "plain (retried)")
REFINE_CASES = SYMMETRIZE_CASES + RETRIED_CASES
# A generated sample asked for a space group, written valid and in it, whose refined structure is not: the
# generation pipeline keeps the written structure as the refined one. How a generated sample's refinement ended:
# a `REFINE_CASES` case or that one.
KEPT_AS_WRITTEN = "as written (refined left the requested group)"
GENERATION_CASES = REFINE_CASES + (KEPT_AS_WRITTEN,)
# Image-atom pairs compared at once when mapping atoms (bounds the memory of a supercell's thousands of operations).
_ATOM_MAP_CHUNK = 1 << 18
# Closer than this (Å), two atoms make a structure invalid (CDVAE's structural validity).
MIN_DISTANCE = 0.5


class SymmetryError(ValueError):
    """spglib finds no space group, or its operations do not map the atoms onto atoms of the same species."""


def space_group(
    structure: Structure, symprec: float = 0.1, angle_tolerance: float = ANGLE_TOLERANCE
) -> int | None:
    """International number of the space group spglib finds at `symprec` (Å); None when it finds none
    (e.g. two atoms of one element closer than `symprec`)."""
    try:
        return SpacegroupAnalyzer(
            structure, symprec=symprec, angle_tolerance=angle_tolerance
        ).get_space_group_number()
    except ValueError:  # pymatgen's SymmetryUndeterminedError is a ValueError
        return None


@functools.cache
def crystal_system(number: int) -> str:
    """Crystal system ("triclinic" ... "cubic") of the space group with international number `number`."""
    return SpaceGroup.from_int_number(number).crystal_system


@dataclass
class SymmetryOperations:
    """The symmetry operations of one crystal in its own cell, with where each sends each atom.

    Operation g maps fractional coordinates `x` to `W_g x + w_g`, and atom i onto atom `atom_map[g, i]` (of the
    same species, up to a lattice translation).

    Args:
        rotations (`np.ndarray` of shape `(k, 3, 3)`, int): `W_g`, in the cell's fractional basis.
        translations (`np.ndarray` of shape `(k, 3)`): `w_g`.
        atom_map (`np.ndarray` of shape `(k, n_atoms)`, int): each row a permutation of the atoms.
        space_group (`int`): International number of the group.
    """

    rotations: np.ndarray
    translations: np.ndarray
    atom_map: np.ndarray
    space_group: int

    @functools.cached_property
    def inverse_rotations(self) -> np.ndarray:
        """`W_g^-1` `(k, 3, 3)`: integer matrices of determinant +-1, as floats."""
        return np.linalg.inv(self.rotations).round()

    @classmethod
    def identity(cls, n_atoms: int) -> SymmetryOperations:
        """Only the identity (the projection then changes nothing)."""
        return cls(np.eye(3, dtype=int)[None], np.zeros((1, 3)), np.arange(n_atoms)[None], 1)


def _spglib_cell(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """spglib's cell of `structure`: lattice, fractional coordinates and one number per species, numbered in order
    of first appearance as `SpacegroupAnalyzer` numbers them (magnetic moments are not passed: the refiner's
    structures carry none)."""
    labels: dict = {}
    numbers = np.array([labels.setdefault(species, len(labels) + 1) for species in structure.species])
    return structure.lattice.matrix, structure.frac_coords, numbers


def symmetry_operations(
    structure: Structure, symprec: float, angle_tolerance: float = ANGLE_TOLERANCE
) -> SymmetryOperations:
    """The operations spglib finds on `structure`'s own cell at `symprec` (Å), and their atom maps.

    spglib gives operations, not the atom map: atom i goes to the atom of its species nearest to its image. The
    map is checked to be a permutation (how far the images lie is left to `symmetrize`, which bounds how far the
    projection moves the atoms: spglib's own tolerance is not a bound on each image's distance). spglib is called
    directly (the same call and cell as `SpacegroupAnalyzer`, without its per-site bookkeeping).

    Raises:
        SymmetryError: spglib finds no group, or an operation's map is not such a permutation.
    """
    return _operations(_spglib_cell(structure), symprec, angle_tolerance)


def _operations(
    cell: tuple[np.ndarray, np.ndarray, np.ndarray], symprec: float, angle_tolerance: float = ANGLE_TOLERANCE
) -> SymmetryOperations:
    """`symmetry_operations` of a structure's spglib cell (`_spglib_cell`)."""
    lattice, frac, numbers = cell
    try:
        dataset = spglib.get_symmetry_dataset(
            (lattice, frac, numbers), symprec=symprec, angle_tolerance=angle_tolerance
        )
    except SpglibError as exc:
        raise SymmetryError(f"spglib finds no space group at symprec {symprec}: {exc}") from exc
    if dataset is None:
        raise SymmetryError(f"spglib finds no space group at symprec {symprec}")
    return _with_atom_map(cell, dataset.rotations, dataset.translations, int(dataset.number))


def operations_in_cell(
    structure: Structure, rotations: np.ndarray, translations: np.ndarray, number: int
) -> SymmetryOperations:
    """`SymmetryOperations` of given operations (in `structure`'s own cell, e.g. a space group's from its tables)
    with the atom map each makes on `structure`: atom i goes to the atom of its species nearest to its image.

    Raises:
        SymmetryError: an operation's map is not a species-keeping permutation.
    """
    return _with_atom_map(_spglib_cell(structure), rotations, translations, number)


def _with_atom_map(
    cell: tuple[np.ndarray, np.ndarray, np.ndarray],
    rotations: np.ndarray,
    translations: np.ndarray,
    number: int,
) -> SymmetryOperations:
    lattice, frac, numbers = cell
    rotations = np.asarray(rotations, dtype=int)
    translations = np.asarray(translations, dtype=float)
    images = np.einsum("gab,nb->gna", rotations, frac) + translations[:, None, :]  # (k, n, 3)
    other_species = numbers[:, None] != numbers[None, :]
    atom_map = np.empty((len(rotations), len(frac)), dtype=int)
    step = max(1, _ATOM_MAP_CHUNK // len(frac) ** 2)  # operations at a time (a supercell can have thousands)
    for start in range(0, len(rotations), step):
        delta = images[start : start + step, :, None, :] - frac[None, None, :, :]  # image of i minus atom j
        delta -= np.round(delta)
        # einsum, not `@`: a BLAS product of a tall (N, 3) matrix can stall in OpenBLAS's threads on a busy CPU.
        cart = np.einsum("...a,ab->...b", delta, lattice)
        distance = np.einsum("...a,...a->...", cart, cart)  # squared, enough to compare
        distance[:, other_species] = np.inf
        atom_map[start : start + step] = distance.argmin(axis=-1)
    bad = (np.sort(atom_map, axis=1) != np.arange(len(frac))).any(axis=1)
    if bad.any():
        raise SymmetryError(
            f"operation {int(bad.argmax())} of space group {number} does not map the atoms onto atoms of the same "
            "species one to one"
        )
    return SymmetryOperations(rotations, translations, atom_map, number)


class SymmetryProjector:
    """Projects a batch of crystals onto the structures that keep each crystal's operations.

    Works on the refiner's flat layout: fractional coordinates `(N, 3)` of all crystals stacked in crystal order,
    lattices `(B, 6)` in the unconstrained space of `hf_crystal.refiner.manifold` (log lengths, mapped angles).
    Coordinates: `F_i <- F_i + mean_g d_ig` with `d_ig` the shortest torus displacement from `F_i` to
    `W_g^-1 (F_pi_g(i) - w_g)`; lattice: metric `M = L L^T` (vectors as rows) `<- mean_g W_g^T M W_g`. Both are
    projections (idempotent) and keep the operations; a crystal given None is left as it is.

    Args:
        operations (`Sequence[SymmetryOperations | None]`): One per crystal, in batch order.
        num_atoms (`Sequence[int]`): Atoms of each crystal.
    """

    def __init__(self, operations: Sequence[SymmetryOperations | None], num_atoms: Sequence[int]):
        if len(operations) != len(num_atoms):
            raise ValueError(f"{len(operations)} operation sets for {len(num_atoms)} crystals")
        offsets = np.concatenate([[0], np.cumsum(num_atoms)]).astype(int)
        atom, source, inverse, shift, op_crystal, rotation = [], [], [], [], [], []
        n_ops = np.ones(len(num_atoms))
        for c, (ops, n) in enumerate(zip(operations, num_atoms, strict=True)):
            if ops is None:
                ops = SymmetryOperations.identity(n)
            if ops.atom_map.shape[1] != n:
                raise ValueError(
                    f"crystal {c}: operations for {ops.atom_map.shape[1]} atoms, crystal has {n}"
                )
            k = len(ops.rotations)
            n_ops[c] = k
            inv = ops.inverse_rotations
            atom.append(np.tile(np.arange(n), k) + offsets[c])
            source.append(ops.atom_map.reshape(-1) + offsets[c])
            inverse.append(np.repeat(inv, n, axis=0))
            shift.append(np.repeat(ops.translations, n, axis=0))
            op_crystal.append(np.full(k, c))
            rotation.append(ops.rotations)
        empty3 = np.zeros((0, 3, 3))
        self._atom = torch.as_tensor(np.concatenate(atom or [[]]), dtype=torch.long)
        self._source = torch.as_tensor(np.concatenate(source or [[]]), dtype=torch.long)
        self._inverse = torch.as_tensor(np.concatenate(inverse or [empty3]), dtype=torch.float64)
        self._shift = torch.as_tensor(np.concatenate(shift or [np.zeros((0, 3))]), dtype=torch.float64)
        self._op_crystal = torch.as_tensor(np.concatenate(op_crystal or [[]]), dtype=torch.long)
        self._rotation = torch.as_tensor(np.concatenate(rotation or [empty3]), dtype=torch.float64)
        self._ops_per_crystal = torch.as_tensor(n_ops, dtype=torch.float64)
        self._ops_per_atom = torch.as_tensor(np.repeat(n_ops, num_atoms), dtype=torch.float64)
        self._symmetric = torch.as_tensor([ops is not None for ops in operations], dtype=torch.bool)

    def project_coords(self, frac_coords: torch.Tensor) -> torch.Tensor:
        """Fractional coordinates `(N, 3)` averaged over the operations, wrapped into [0, 1)."""
        x = frac_coords.double()
        dev = x.device
        image = torch.einsum(
            "rab,rb->ra", self._inverse.to(dev), x[self._source.to(dev)] - self._shift.to(dev)
        )
        # Shortest displacement from each atom to its image: torus_displacement(a, b) is b - a.
        displacement = torus_displacement(x[self._atom.to(dev)], image)
        total = torch.zeros_like(x).index_add_(0, self._atom.to(dev), displacement)
        return wrap(x + total / self._ops_per_atom.to(dev)[:, None]).to(frac_coords.dtype)

    def project_velocity(self, velocity: torch.Tensor) -> torch.Tensor:
        """Coordinate velocities `(N, 3)` averaged over the operations, `v_i <- mean_g W_g^-1 v_pi_g(i)`.

        Linear, so a step from a symmetric state along it stays exactly symmetric however long it is (the
        projection of positions needs the images within half a cell of each atom to average them on the torus).
        """
        v = velocity.double()
        dev = v.device
        image = torch.einsum("rab,rb->ra", self._inverse.to(dev), v[self._source.to(dev)])
        total = torch.zeros_like(v).index_add_(0, self._atom.to(dev), image)
        return (total / self._ops_per_atom.to(dev)[:, None]).to(velocity.dtype)

    def project_lattice(self, lattice: torch.Tensor) -> torch.Tensor:
        """Unconstrained lattice parameters `(B, 6)` whose metric is averaged over the operations."""
        params = self.project_parameters(unconstrained_to_lattice(lattice.double()))
        return lattice_to_unconstrained(params).to(lattice.dtype)

    def project_parameters(self, params: torch.Tensor) -> torch.Tensor:
        """Lattice parameters `(B, 6)` (Å, degrees) whose metric is averaged over the operations (not limited to
        the refiner's angle interval)."""
        dev = params.device
        metric = _metric(params.double())
        w = self._rotation.to(dev)
        transformed = w.transpose(1, 2) @ metric[self._op_crystal.to(dev)] @ w
        metric = torch.zeros_like(metric).index_add_(0, self._op_crystal.to(dev), transformed)
        metric = metric / self._ops_per_crystal.to(dev)[:, None, None]
        return _parameters(metric).to(params.dtype)

    def __call__(self, frac_coords: torch.Tensor, lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both projections: (fractional coordinates `(N, 3)`, unconstrained lattice `(B, 6)`)."""
        return self.project_coords(frac_coords), self.project_lattice(lattice)

    def project_end(
        self, frac_coords: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last projection of a flow, in float64: fractional coordinates `(N, 3)` and lattice parameters
        `(B, 6)` (Å, degrees, not limited to the refiner's angle interval); crystals without operations are
        returned as they are."""
        projected = self.project_parameters(params.double())
        symmetric = self._symmetric.to(params.device)[:, None]
        return self.project_coords(frac_coords.double()), torch.where(symmetric, projected, params.double())


def _metric(params):
    """Metric tensors `(B, 3, 3)` from lattice parameters `(B, 6)` (Å, degrees); numpy or torch."""
    xp = torch if isinstance(params, torch.Tensor) else np
    a, b, c = params[:, 0], params[:, 1], params[:, 2]
    cosines = xp.cos(xp.deg2rad(params[:, 3:]))
    ca, cb, cg = cosines[:, 0], cosines[:, 1], cosines[:, 2]
    rows = [
        xp.stack([a * a, a * b * cg, a * c * cb], -1),
        xp.stack([a * b * cg, b * b, b * c * ca], -1),
        xp.stack([a * c * cb, b * c * ca, c * c], -1),
    ]
    return xp.stack(rows, -2)


def _parameters(metric):
    """Lattice parameters `(B, 6)` (Å, degrees) of metric tensors `(B, 3, 3)`; numpy or torch."""
    xp = torch if isinstance(metric, torch.Tensor) else np
    a, b, c = (xp.sqrt(xp.clip(metric[:, i, i], 0, None)) for i in range(3))
    cosines = [metric[:, 1, 2] / (b * c), metric[:, 0, 2] / (a * c), metric[:, 0, 1] / (a * b)]
    angles = [xp.rad2deg(xp.arccos(xp.clip(cosine, -1, 1))) for cosine in cosines]
    return xp.stack([a, b, c, *angles], -1)


def _wrap(x: np.ndarray) -> np.ndarray:
    """`manifold.wrap` for numpy arrays: `x` mod 1 in [0, 1)."""
    y = np.remainder(x, 1.0)
    return np.where(y >= 1.0, 0.0, y)


def _project(structure: Structure, operations: SymmetryOperations) -> tuple[np.ndarray, np.ndarray]:
    """Projected fractional coordinates `(n, 3)` and metric `(3, 3)` of `structure` (`SymmetryProjector`'s maps for
    one crystal)."""
    frac = structure.frac_coords
    shifted = frac[operations.atom_map] - operations.translations[:, None, :]  # (k, n, 3)
    image = np.einsum("gab,gnb->gna", operations.inverse_rotations, shifted)
    displacement = _wrap(image - frac + 0.5) - 0.5
    coords = _wrap(frac + displacement.sum(0) / len(displacement))
    w = operations.rotations.astype(float)
    metric = (w.transpose(0, 2, 1) @ _metric(np.array([structure.lattice.parameters])) @ w).mean(0)
    return coords, metric


def _lattice(metric: np.ndarray) -> Lattice:
    return Lattice.from_parameters(*_parameters(metric[None])[0])


def project_structure(structure: Structure, operations: SymmetryOperations) -> Structure:
    """`structure` projected onto the structures that keep `operations`: same cell orientation up to the metric,
    same atoms in the same order."""
    coords, metric = _project(structure, operations)
    return Structure(_lattice(metric), structure.species, coords, site_properties=structure.site_properties)


@dataclass
class Symmetrized:
    """What `symmetrize` did to one structure.

    Args:
        structure (`Structure`): The projected structure (the input itself in the "plain" case).
        operations (`SymmetryOperations | None`): The operations it keeps; None in the "plain" case.
        case (`str`): One of `SYMMETRIZE_CASES`.
    """

    structure: Structure
    operations: SymmetryOperations | None
    case: str


def _strain(metric: np.ndarray, projected: np.ndarray) -> float:
    """Largest relative change of a lattice vector's length from `metric` to `projected`: the spectral norm of
    `B^-1 (B' - B)`, with `B`, `B'` the Cholesky bases (rows) of the two metrics."""
    try:
        basis = np.linalg.cholesky(metric)
        return float(np.linalg.norm(np.linalg.solve(basis, np.linalg.cholesky(projected) - basis), 2))
    except np.linalg.LinAlgError:  # a degenerate cell: no bound
        return float("inf")


# Integer shifts to the 27 cells around a pair's nearest image.
_IMAGES = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))
_ZERO_IMAGE = 13


def _plane_spacing(matrix: np.ndarray) -> float:
    """Smallest spacing of the cell's lattice planes (Å), one over the longest reciprocal vector: any fractional
    vector with a component of at least `x` in size is at least `x` times it long."""
    return float(1 / np.sqrt((np.linalg.inv(matrix) ** 2).sum(0)).max())


def _nearby(matrix: np.ndarray, frac_coords: np.ndarray) -> tuple[float, float]:
    """Shortest distance between two atoms and shortest non-zero lattice vector, searched over the 27 cells around
    each pair's nearest image: exact where the first is at most 1.5 and the second at most 2 plane spacings."""
    delta = frac_coords[None, :, :] - frac_coords[:, None, :]
    delta -= np.round(delta)
    n = len(frac_coords)
    cart = np.einsum(
        "...a,ab->...b", delta[:, :, None, :] + _IMAGES, matrix
    )  # (n, n, 27, 3); see _operations
    squared = np.einsum("...a,...a->...", cart, cart)
    own = np.delete(squared[0, 0], _ZERO_IMAGE).min()  # an atom to its own images, the same for every atom
    squared[np.diag_indices(n)] = np.inf
    return float(np.sqrt(squared.min())), float(np.sqrt(own))


def _min_distance(lattice: Lattice, frac_coords: np.ndarray) -> float:
    """Shortest distance between two atoms (pymatgen's `get_all_distances` where the 27 nearest cells might not
    hold it)."""
    if len(frac_coords) < 2:
        return float("inf")
    closest, _ = _nearby(lattice.matrix, frac_coords)
    if closest <= 1.5 * _plane_spacing(lattice.matrix):
        return closest
    distances = lattice.get_all_distances(frac_coords, frac_coords)
    return float(distances[np.triu_indices(len(frac_coords), 1)].min())


def structurally_valid(structure: Structure) -> bool:
    """CDVAE's structural validity as `hf_crystal.evaluation.validity.structure_validity` decides it (atoms and
    an atom's own images at least 0.5 Å apart, a cell of at least 0.1 Å^3), over the 27 cells around each pair
    where that is exact (cells at least 1/3 Å thick), else by that function."""
    from hf_crystal.evaluation.validity import MIN_CELL_VOLUME, MIN_INTERATOMIC_DISTANCE, structure_validity

    matrix = structure.lattice.matrix
    if not np.isfinite(matrix).all() or structure.volume < MIN_CELL_VOLUME:
        return False
    if 1.5 * _plane_spacing(matrix) < MIN_INTERATOMIC_DISTANCE:
        return structure_validity(structure)
    return min(_nearby(matrix, structure.frac_coords)) >= MIN_INTERATOMIC_DISTANCE


def symmetrize(
    structure: Structure, tolerance: float = 0.1, min_distance: float = MIN_DISTANCE, first: str = "tolerance"
) -> Symmetrized:
    """Project `structure` once onto the structures keeping the operations spglib finds at `tolerance` (Å).

    A tolerance fails when spglib finds no group or an operation's atom map is not a species-keeping
    permutation, or when the projection moves an atom by more than the tolerance or brings two atoms closer than
    `min_distance` (Å) that were not already that close; then `tolerance / 10` and `tolerance / 100` are tried,
    and if all fail the structure is returned as it is (case "plain"). Operations that are the identity alone (P1)
    are returned with the structure itself: nothing to project, and a lower tolerance finds no more. `first` (a
    `SYMMETRIZE_CASES` case) starts the ladder lower, e.g. "tolerance/10".
    """
    if first not in SYMMETRIZE_CASES:
        raise ValueError(f"first must be one of {SYMMETRIZE_CASES}, got {first!r}")
    rungs = list(zip(SYMMETRIZE_CASES, (tolerance, tolerance / 10, tolerance / 100), strict=False))
    closest = None  # the input's closest pair, computed once a projection needs it
    cell = _spglib_cell(structure)
    for case, tol in rungs[SYMMETRIZE_CASES.index(first) :]:
        try:
            operations = _operations(cell, tol)
        except SymmetryError:
            continue
        if len(operations.rotations) == 1:  # the identity alone: nothing to project, no lower rung keeps more
            return Symmetrized(structure, operations, case)
        coords, metric = _project(structure, operations)
        lattice = _lattice(metric)
        delta = coords - structure.frac_coords
        delta -= np.round(delta)
        moved = np.linalg.norm(delta @ lattice.matrix, axis=-1).max(initial=0.0)
        if moved > tol:
            continue
        if closest is None:
            closest = _min_distance(structure.lattice, structure.frac_coords)
        floor = min(closest, min_distance) - 1e-6
        # Every pair is at least `closest * (1 - strain) - 2 * moved` apart after the projection (each atom moved
        # by at most `moved`, pair vectors stretched by at most the strain's norm): only when that bound does not
        # settle it are the pairs measured.
        if closest * (1 - _strain(structure.lattice.metric_tensor, metric)) - 2 * moved < floor:
            if _min_distance(lattice, coords) < floor:
                continue
        projected = Structure(lattice, structure.species, coords, site_properties=structure.site_properties)
        return Symmetrized(projected, operations, case)
    return Symmetrized(structure, None, "plain")


@dataclass
class SymmetrizedBatch:
    """`symmetrize_structures`' result: the structures, the projector of their operations, and the cases.

    Args:
        structures (`list[Structure]`): Projected structures, in input order.
        projector (`SymmetryProjector`): Keeps each structure's operations (identity for "plain" ones).
        cases (`list[str]`): How each structure ended (`SYMMETRIZE_CASES`).
    """

    structures: list[Structure]
    projector: SymmetryProjector
    cases: list[str]
    operations: list[SymmetryOperations | None]

    def project(self, structures: Sequence[Structure]) -> list[Structure]:
        """Project each structure (e.g. the end of a flow over the batch, in the same cells) onto its operations.

        The flow's lattice lives in an angle interval (`hf_crystal.refiner.manifold`): where a symmetric metric
        needs an angle outside it, the state can only be nearly symmetric, and this last projection in
        the metric makes it exact.
        """
        if len(structures) != len(self.operations):
            raise ValueError(f"{len(structures)} structures for {len(self.operations)} operation sets")
        coords, params = self.projector.project_end(
            torch.as_tensor(np.concatenate([s.frac_coords for s in structures])),
            torch.tensor([s.lattice.parameters for s in structures]),
        )
        coords, params = coords.numpy(), params.numpy()
        out, start = [], 0
        for s, ops, p in zip(structures, self.operations, params, strict=True):
            end = start + len(s)
            if ops is not None:
                site_properties = s.site_properties
                s = Structure(
                    Lattice.from_parameters(*p), s.species, coords[start:end], site_properties=site_properties
                )
            out.append(s)
            start = end
        return out

    @property
    def counts(self) -> dict[str, int]:
        """Number of structures in each case, every case listed."""
        counts = Counter(self.cases)
        return {case: counts[case] for case in SYMMETRIZE_CASES}


def symmetrize_structures(
    structures: Sequence[Structure], tolerance: float = 0.1, first: Sequence[str] | None = None
) -> SymmetrizedBatch:
    """`symmetrize` each structure (from the ladder's rung `first[i]`, default the top), and a projector that keeps
    their operations along a flow over the batch."""
    first = first or ["tolerance"] * len(structures)
    results = [symmetrize(s, tolerance, first=rung) for s, rung in zip(structures, first, strict=True)]
    return SymmetrizedBatch(
        structures=[r.structure for r in results],
        projector=SymmetryProjector([r.operations for r in results], [len(s) for s in structures]),
        cases=[r.case for r in results],
        operations=[r.operations for r in results],
    )
