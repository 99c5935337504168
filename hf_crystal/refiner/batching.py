"""A batch of crystals as flat tensors (no padding), to and from pymatgen structures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from pymatgen.core import Element, Lattice, Structure

from hf_crystal.refiner.manifold import lattice_to_unconstrained, unconstrained_to_lattice, wrap


def niggli_reduced(structure: Structure) -> Structure:
    """The Niggli-reduced cell the refiner integrates (FlowMM reduces every structure before pairing); a lattice
    pymatgen cannot reduce is kept as it is."""
    try:
        return structure.get_reduced_structure()
    except ValueError:  # pymatgen's "can't reduce lattice" for degenerate cells
        return structure


@dataclasses.dataclass
class CrystalBatch:
    """Crystals of different sizes stacked along the atom dimension.

    Args:
        atom_types (`torch.LongTensor` of shape `(N,)`): Atomic numbers; fixed during the flow.
        frac_coords (`torch.Tensor` of shape `(N, 3)`): Fractional coordinates in [0, 1).
        lattice (`torch.Tensor` of shape `(B, 6)`): Lattice parameters in the unconstrained space of
            `manifold.lattice_to_unconstrained` (log lengths, mapped angles).
        crystal_index (`torch.LongTensor` of shape `(N,)`): Crystal of each atom, in [0, B).
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    lattice: torch.Tensor
    crystal_index: torch.Tensor

    @property
    def num_crystals(self) -> int:
        return self.lattice.shape[0]

    @property
    def num_atoms(self) -> torch.Tensor:
        """Atoms per crystal, `(B,)` long."""
        return torch.bincount(self.crystal_index, minlength=self.num_crystals)

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], niggli: bool = True, dtype: torch.dtype = torch.float32
    ) -> CrystalBatch:
        """Stack ordered structures; atoms keep their order, coordinates are wrapped into [0, 1).

        With `niggli`, each cell is Niggli-reduced first (FlowMM reduces every structure before pairing), which
        also brings its angles into about 60-120°, inside the refiner's angle interval; a lattice pymatgen cannot
        reduce is kept as it is.
        """
        types, coords, params, index = [], [], [], []
        for i, structure in enumerate(structures):
            if not structure.is_ordered:
                raise ValueError(f"structure {i} is disordered: the refiner needs one element per site")
            if niggli:
                structure = niggli_reduced(structure)
            types.append(torch.tensor([site.specie.Z for site in structure], dtype=torch.long))
            coords.append(torch.as_tensor(structure.frac_coords, dtype=torch.float64))
            params.append(
                torch.tensor([*structure.lattice.abc, *structure.lattice.angles], dtype=torch.float64)
            )
            index.append(torch.full((len(structure),), i, dtype=torch.long))
        if not structures:
            return cls(
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, 3, dtype=dtype),
                torch.zeros(0, 6, dtype=dtype),
                torch.zeros(0, dtype=torch.long),
            )
        return cls(
            atom_types=torch.cat(types),
            frac_coords=wrap(torch.cat(coords)).to(dtype),
            lattice=lattice_to_unconstrained(torch.stack(params)).to(dtype),
            crystal_index=torch.cat(index),
        )

    def to_structures(self, project: Callable | None = None) -> list[Structure]:
        """One pymatgen `Structure` per crystal: same elements in the same order, lattice from the parameters.

        `project` (e.g. `hf_crystal.symmetry.SymmetryProjector.project_end`) maps the float64 fractional
        coordinates `(N, 3)` and lattice parameters `(B, 6)` (Å, degrees) to the ones to build the structures from.
        """
        params = unconstrained_to_lattice(self.lattice.detach().double())
        coords = wrap(self.frac_coords.detach().double())
        if project is not None:
            coords, params = project(coords, params)
        params, coords = params.cpu().numpy(), coords.cpu().numpy()
        index = self.crystal_index.cpu().numpy()
        types = self.atom_types.cpu().tolist()
        structures = []
        for i in range(self.num_crystals):
            atoms = (index == i).nonzero()[0]
            structures.append(
                Structure(
                    Lattice.from_parameters(*params[i]),
                    [Element.from_Z(types[j]) for j in atoms],
                    coords[atoms],
                )
            )
        return structures

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CrystalBatch:
        """A copy on `device`; `dtype` applies to the floating tensors only."""
        return CrystalBatch(
            atom_types=self.atom_types.to(device),
            frac_coords=self.frac_coords.to(device, dtype),
            lattice=self.lattice.to(device, dtype),
            crystal_index=self.crystal_index.to(device),
        )

    def replace(self, **changes: torch.Tensor) -> CrystalBatch:
        """A copy with some tensors replaced (e.g. the state after a flow step)."""
        return dataclasses.replace(self, **changes)
