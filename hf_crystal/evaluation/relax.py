"""Batched structure relaxation with CHGNet: one batched forward pass per optimizer step.

Each structure keeps its own ASE optimizer (FIRE by default) acting on ASE's ``FrechetCellFilter`` (through
``FastFrechetCellFilter``, numerically the same), the setup of CHGNet's ``StructOptimizer``; what changes
is that the energies, forces and stresses of all active structures come from a single batched CHGNet call
per step: one forward and one backward pass without ``create_graph`` (``chgnet_fast.FastCHGNet``: CHGNet's
own weights and modules, the same numbers as ``CHGNet.predict_graph`` to float32 rounding, about a quarter
of its CPU time on MP-20 crystals), on graphs built from the ASE atoms with NumPy. Every structure
converges (or runs out of steps) on its own, and its slot is refilled from the queue. A structure that
fails (graph construction, non-finite output, exploding cell) is reported with an ``error`` and never
stops the run. Results are cached on disk keyed by a hash of the structure and the settings (and the
implementation, ``RELAX_IMPLEMENTATION``), so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, optimize, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from pymatgen.core import Lattice, Structure
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

# CHGNet's StructOptimizer.relax defaults (Deng et al. 2023), kept in a module the command line can import
# without loading ASE or pymatgen.
from hf_crystal.evaluation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FMAX,
    DEFAULT_MAX_STEPS,
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
)

# A cell whose volume changes by more than this factor during relaxation is reported as blown up.
MAX_VOLUME_RATIO = 8.0
# Below this volume per atom a structure is not relaxed, and a relaxation that reaches it stops: CHGNet's
# bond graph grows as 1 / volume and its angle graph as 1 / volume^2. At 1 Å^3/atom one batch of 16 LLM
# samples took 15.7 GB (killed by the OOM killer); the densest MP-20 crystal (FeH) has 6.6 Å^3/atom.
MIN_VOLUME_PER_ATOM = 3.0
# Part of the cache key: results of another implementation (1: CHGNet.predict_graph, double backward) are
# not mixed with this one's.
RELAX_IMPLEMENTATION = 2
# spglib tolerance (Å) of ASE's FixSymmetry on a structure already symmetrized by projection.
_EXACT_SYMPREC = 1e-5


class RelaxationError(RuntimeError):
    """A relaxation setting or model problem (per-structure failures are reported, not raised)."""


@dataclass
class RelaxResult:
    """Outcome of relaxing one structure. Energies are CHGNet total energies in eV (NaN on failure)."""

    structure: Structure | None
    energy: float
    initial_energy: float
    steps: int
    converged: bool
    n_atoms: int
    error: str | None = None
    cached: bool = field(default=False, compare=False)

    @property
    def energy_per_atom(self) -> float:
        return self.energy / self.n_atoms

    @property
    def energy_drop_per_atom(self) -> float:
        """Initial minus final energy per atom (eV/atom), >= 0 for a successful descent."""
        return (self.initial_energy - self.energy) / self.n_atoms

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("cached")
        out["structure"] = None if self.structure is None else self.structure.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> RelaxResult:
        d = dict(d)
        d["structure"] = None if d["structure"] is None else Structure.from_dict(d["structure"])
        return cls(**d)


def structure_key(structure: Structure, settings: dict) -> str:
    """SHA-256 of the species, lattice, fractional coordinates (rounded to 1e-6) and relaxer settings."""
    payload = {
        "species": [str(sp) for sp in structure.species],
        "lattice": np.round(structure.lattice.matrix, 6).tolist(),
        "frac": np.round(np.mod(structure.frac_coords, 1.0), 6).tolist(),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class RelaxCache:
    """One JSON file per relaxed structure, written atomically as soon as the structure finishes."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> RelaxResult | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            result = RelaxResult.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # a truncated file from a killed run: relax again
        result.cached = True
        return result

    def put(self, key: str, result: RelaxResult) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result.to_dict()))
        tmp.replace(path)


class FastFrechetCellFilter(FrechetCellFilter):
    """ASE's ``FrechetCellFilter`` (default options) with the same positions and forces, computed faster.

    ASE recomputes ``logm`` of the deformation gradient on every position and force request and takes nine
    separate ``expm_frechet`` calls per force evaluation: for small cells that costs more than the batched
    CHGNet call. Here the log is remembered from ``set_positions`` (the cell degrees of freedom are
    ``log(n F) * exp_cell_factor``, n the number of atoms), the nine Fréchet derivatives come from one
    stacked block-matrix exponential (``expm([[L, E], [0, L]])`` holds the derivative of ``expm`` at L in
    direction E in its upper-right block; Higham, Functions of Matrices, 2008, eq. 3.16), and the forces are
    memoised until the positions change (the convergence check and the optimizer step share them).
    """

    _forces = None
    _cell_dofs = None

    def _log_deform(self) -> np.ndarray:
        if self._cell_dofs is None:
            self._cell_dofs = self.logm(len(self.atoms) * self.deform_grad()) * self.exp_cell_factor
        return self._cell_dofs / self.exp_cell_factor - np.log(len(self.atoms)) * np.eye(3)

    def get_positions(self):
        n = len(self.atoms)
        pos = np.empty((n + 3, 3))
        pos[:n] = np.linalg.solve(self.deform_grad(), self.atoms.get_positions().T).T
        self._log_deform()
        pos[n:] = self._cell_dofs
        return pos

    def set_positions(self, new, **kwargs):
        self._forces = None
        super().set_positions(new, **kwargs)
        self._cell_dofs = np.array(new[len(self.atoms) :], dtype=float)

    def get_forces(self, **kwargs):
        if self._forces is None:
            self._forces = self._frechet_forces(**kwargs)
        return self._forces.copy()

    def _frechet_forces(self, **kwargs) -> np.ndarray:
        from scipy.linalg import expm

        stress = self.atoms.get_stress(**kwargs)
        atom_forces = self.atoms.get_forces(**kwargs)
        volume = self.atoms.cell.volume
        virial = -volume * voigt_6_to_full_3x3_stress(stress)
        deform = self.deform_grad()
        log_deform = self._log_deform()
        cell_grad = virial @ np.linalg.inv(deform.T)
        blocks = np.zeros((9, 6, 6))
        blocks[:, :3, :3] = log_deform
        blocks[:, 3:, 3:] = log_deform
        blocks[np.arange(9), np.arange(9) // 3, 3 + np.arange(9) % 3] = 1.0
        derivatives = expm(blocks)[:, :3, 3:]
        n = len(self.atoms)
        forces = np.empty((n + 3, 3))
        forces[:n] = atom_forces @ deform
        forces[n:] = np.einsum("kij,ij->k", derivatives, cell_grad).reshape(3, 3) / self.exp_cell_factor
        self.stress = full_3x3_to_voigt_6_stress(-virial / volume)
        return forces


class _Slot:
    """One structure being relaxed: its ASE atoms, (filtered) optimizable and optimizer state."""

    def __init__(
        self,
        index: int,
        structure: Structure,
        optimizer_cls,
        relax_cell: bool,
        fmax: float,
        symprec: float | None = None,
    ):
        self.index = index
        if symprec is not None:  # the structure's own group, exactly (same cell, same atoms)
            from hf_crystal.symmetry import symmetrize

            structure = symmetrize(structure, symprec).structure
        self.atoms = Atoms(
            numbers=[site.specie.Z for site in structure],
            positions=structure.cart_coords,
            cell=structure.lattice.matrix,
            pbc=True,
        )
        if symprec is not None:
            from ase.constraints import FixSymmetry

            # The projection made the symmetry exact: a tight tolerance finds exactly the group it kept.
            self.atoms.set_constraint(FixSymmetry(self.atoms, symprec=_EXACT_SYMPREC))
        target = FastFrechetCellFilter(self.atoms) if relax_cell else self.atoms
        self.optimizer = optimizer_cls(target, logfile=None)
        self.optimizer.fmax = fmax
        self.steps = 0
        self.initial_energy = float("nan")
        self.initial_volume = self.atoms.get_volume()

    def structure(self) -> Structure:
        return Structure(
            Lattice(np.array(self.atoms.cell)),
            self.atoms.get_chemical_symbols(),
            self.atoms.get_positions(),
            coords_are_cartesian=True,
        )


class BatchedRelaxer:
    """Relax many structures at once with CHGNet, one batched forward pass per optimizer step.

    Args:
        model: a ``chgnet.model.CHGNet``; the pretrained CHGNet 0.3.0 (shipped with the package) if None.
        optimizer: one of FIRE, BFGS, LBFGS, MDMin (ASE optimizers, each structure keeps its own state).
        fmax: convergence threshold on the largest generalized force (eV/Å), as in ASE.
        max_steps: optimizer steps before a structure is reported as not converged.
        relax_cell: relax the cell (ASE ``FrechetCellFilter``) as well as the positions.
        batch_size: number of structures stepped together.
        cache_dir: directory of the on-disk result cache; None disables caching.
        fix_symmetry: keep each structure's space group, as crystal-structure prediction codes do: the structure
            is first projected onto its group at ``symprec`` (``hf_crystal.symmetry.symmetrize``, same cell and
            atoms; where no group is found at ``symprec`` or a tenth or hundredth of it, it relaxes freely),
            then relaxed under ASE's ``FixSymmetry`` constraint.
        symprec: spglib tolerance (Å) of ``fix_symmetry``.
    """

    def __init__(
        self,
        model=None,
        *,
        optimizer: str = DEFAULT_OPTIMIZER,
        fmax: float = DEFAULT_FMAX,
        max_steps: int = DEFAULT_MAX_STEPS,
        relax_cell: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: str | os.PathLike | None = None,
        fix_symmetry: bool = False,
        symprec: float = 0.1,
    ):
        if optimizer not in OPTIMIZERS:
            raise RelaxationError(f"optimizer {optimizer!r} is not supported; choose one of {OPTIMIZERS}")
        if batch_size < 1 or max_steps < 0 or fmax <= 0 or symprec <= 0:
            raise RelaxationError("batch_size must be >= 1, max_steps >= 0, fmax > 0 and symprec > 0")
        if model is None:
            from chgnet.model import CHGNet

            model = CHGNet.load(verbose=False, use_device="cpu")
        self.model = model
        self.optimizer = optimizer
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.relax_cell = bool(relax_cell)
        self.batch_size = int(batch_size)
        self.cache = RelaxCache(cache_dir) if cache_dir is not None else None
        self.symprec = float(symprec) if fix_symmetry else None
        self._calculator = None

    @property
    def settings(self) -> dict:
        """Everything that changes a result: part of the cache key."""
        symmetry = {} if self.symprec is None else {"fix_symmetry": self.symprec}
        return symmetry | {
            "model": f"chgnet-{self.model.version}",
            "optimizer": self.optimizer,
            "fmax": self.fmax,
            "max_steps": self.max_steps,
            "relax_cell": self.relax_cell,
            # 2: single-backward CHGNet (chgnet_fast), same numbers as CHGNet's to float32 rounding.
            "implementation": RELAX_IMPLEMENTATION,
        }

    def relax(
        self, structures: Sequence[Structure], *, progress: bool = True, desc: str = "relax"
    ) -> list[RelaxResult]:
        """Relax ``structures``; returns one ``RelaxResult`` per input, in order (failures have ``error``)."""
        results: list[RelaxResult | None] = [None] * len(structures)
        keys = [structure_key(s, self.settings) for s in structures] if self.cache else None
        pending: deque[int] = deque()
        for i in range(len(structures)):
            hit = self.cache.get(keys[i]) if self.cache else None
            if hit is not None:
                results[i] = hit
            else:
                pending.append(i)
        bar = tqdm(
            total=len(structures), desc=desc, disable=not progress, initial=len(structures) - len(pending)
        )

        def finish(i: int, result: RelaxResult) -> None:
            results[i] = result
            if self.cache is not None:
                self.cache.put(keys[i], result)
            bar.update(1)

        # The optimizer's linear algebra is on 3x3 / 6x6 matrices: a multi-threaded BLAS only adds
        # thread hand-offs (tens of ms per call on a busy machine). CHGNet (torch, OpenMP) is unaffected.
        with threadpool_limits(limits=1, user_api="blas"):
            self._run(structures, pending, finish)
        bar.close()
        return results  # type: ignore[return-value]

    def _run(self, structures: Sequence[Structure], pending: deque[int], finish) -> None:
        active: list[_Slot] = []
        while pending or active:
            while pending and len(active) < self.batch_size:
                i = pending.popleft()
                slot, error = self._start(i, structures[i])
                if slot is None:
                    finish(i, _failure(structures[i], error, 0, float("nan")))
                else:
                    active.append(slot)
            still_active = []
            for slot, outcome in zip(active, self._predict(active), strict=True):
                done = self._advance(slot, outcome)
                if done is None:
                    still_active.append(slot)
                else:
                    finish(slot.index, done)
            active = still_active

    def _start(self, index: int, structure: Structure) -> tuple[_Slot | None, str | None]:
        if not structure.is_ordered:
            return None, "disordered structure (partial occupancies) cannot be relaxed"
        if not structure.volume / len(structure) >= MIN_VOLUME_PER_ATOM:
            return None, f"cell too dense to relax ({structure.volume / len(structure):.3g} Å^3/atom)"
        try:
            return _Slot(
                index, structure, getattr(optimize, self.optimizer), self.relax_cell, self.fmax, self.symprec
            ), None
        except Exception as exc:  # e.g. a singular cell
            return None, f"setup failed: {exc}"

    @property
    def calculator(self):
        """The single-backward batched CHGNet (``chgnet_fast.FastCHGNet``), built on first use."""
        if self._calculator is None:
            from hf_crystal.evaluation.chgnet_fast import FastCHGNet

            self._calculator = FastCHGNet(self.model)
        return self._calculator

    def _predict(self, slots: list[_Slot]) -> list[dict | str]:
        """Batched CHGNet energies/forces/stresses for all slots; a string for each slot that failed."""
        outcomes: list[dict | str] = ["" for _ in slots]
        graphs, owners = [], []
        calculator = self.calculator
        for k, slot in enumerate(slots):
            try:  # an isolated atom (no neighbour within the cutoff) is a failure
                atoms = slot.atoms
                graphs.append(calculator.graph(atoms.numbers, atoms.positions, atoms.cell.array))
                owners.append(k)
            except Exception as exc:
                outcomes[k] = f"graph construction failed: {exc}"
        if not graphs:
            return outcomes
        try:
            preds = self._forward(graphs)
        except Exception:  # isolate the structure that broke the batch
            preds = []
            for g in graphs:
                try:
                    preds.extend(self._forward([g]))
                except Exception as exc:
                    preds.append(f"CHGNet failed: {exc}")
        for k, pred in zip(owners, preds, strict=True):
            outcomes[k] = pred
        return outcomes

    def _forward(self, graphs: list) -> list[dict]:
        return self.calculator.predict(graphs)

    def _advance(self, slot: _Slot, outcome: dict | str) -> RelaxResult | None:
        """Feed one prediction to a slot's optimizer; a result when the slot is finished, else None."""
        n = len(slot.atoms)
        if isinstance(outcome, str):
            return _failure(slot.structure(), outcome, slot.steps, slot.initial_energy)
        energy = float(outcome["e"]) * n if self.model.is_intensive else float(outcome["e"])
        forces, stress = outcome["f"], outcome["s"]
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            return _failure(slot.structure(), "non-finite CHGNet output", slot.steps, slot.initial_energy)
        slot.atoms.calc = SinglePointCalculator(
            slot.atoms,
            energy=energy,
            free_energy=energy,
            forces=forces,
            stress=full_3x3_to_voigt_6_stress(stress * units.GPa),
        )
        if slot.steps == 0:
            slot.initial_energy = energy
        opt = slot.optimizer
        converged = bool(opt.gradient_converged(opt.optimizable.get_gradient()))
        if converged or slot.steps >= self.max_steps:
            return RelaxResult(slot.structure(), energy, slot.initial_energy, slot.steps, converged, n)
        try:
            opt.step()
        except Exception as exc:
            return _failure(
                slot.structure(), f"optimizer step failed: {exc}", slot.steps, slot.initial_energy
            )
        slot.steps += 1
        ratio = slot.atoms.get_volume() / slot.initial_volume
        if (
            not (1 / MAX_VOLUME_RATIO < ratio < MAX_VOLUME_RATIO)
            or slot.atoms.get_volume() < MIN_VOLUME_PER_ATOM * n
        ):
            return _failure(
                slot.structure(), f"cell blew up (volume x{ratio:.3g})", slot.steps, slot.initial_energy
            )
        return None


def _failure(structure: Structure, error: str | None, steps: int, initial_energy: float) -> RelaxResult:
    return RelaxResult(None, float("nan"), initial_energy, steps, False, len(structure), error or "failed")
