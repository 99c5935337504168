"""FlowLLM's refiner as a diffusers pipeline: structures in, structures with moved atoms and lattice out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from huggingface_hub import snapshot_download
from pymatgen.core import Structure

from hf_crystal import embedded
from hf_crystal.hub_access import offline_errors
from hf_crystal.refiner.batching import CrystalBatch, niggli_reduced
from hf_crystal.refiner.modeling_cspnet import CSPNetModel
from hf_crystal.refiner.scheduling_crystal_flow import CrystalFlowScheduler

# FlowMM samples with 1000 Euler steps. For the MP-20 refiner in models/, 10 steps were as good as 100 and
# 1000 (structural validity 0.855 / 0.836 / 0.836 of 256 LLM samples, match to CHGNet-relaxed 0.68 / 0.67 at
# 10 / 100 steps; benchmarks/refiner_sizes.py) at a tenth of the cost (benchmarks/bench_refiner.py).
DEFAULT_NUM_INFERENCE_STEPS = 10
# Crystals integrated together; on a CPU, 64 MP-20-sized crystals gave the best throughput (bench_refiner.py).
DEFAULT_BATCH_SIZE = 64
# Symmetry operations are looked for at this tolerance (Å) by default (spglib's symprec; the headline tolerance of
# `hf_crystal.evaluation.symmetry`), then at a tenth and a hundredth of it (`hf_crystal.symmetry.symmetrize`).
DEFAULT_SYMMETRY_TOLERANCE = 0.1
# `from_pretrained` options that concern the download of a Hub repo.
_DOWNLOAD_OPTIONS = ("revision", "cache_dir", "token", "force_download", "local_files_only")


@dataclass
class CrystalRefinerPipelineOutput(BaseOutput):
    """Refined structures.

    Args:
        structures (`list[Structure]`): One per input, in input order, with the input's elements in the input's
            site order (of the Niggli-reduced cell).
        symmetry_cases (`list[str]`, *optional*): With a symmetry tolerance, how each input was symmetrized
            (`hf_crystal.symmetry.REFINE_CASES`: its operations found at the tolerance, a tenth or a hundredth
            of it, or "plain": not found, refined without projection; "... (retried)": its first output was
            structurally invalid and this is the highest rung below at which it came out valid, or "plain").
    """

    structures: list[Structure]
    symmetry_cases: list[str] | None = None


class CrystalRefinerPipeline(DiffusionPipeline):
    """Moves atom positions and the lattice of given structures toward realistic ones (FlowLLM: the structures,
    e.g. an LLM's samples, are the base of a Riemannian flow; atom types and counts never change).

    Args:
        model ([`CSPNetModel`]): The vector field.
        scheduler ([`CrystalFlowScheduler`]): Integrates it from t = 0 to 1.

    On a CPU shared with other jobs, run with `torch.set_num_threads(1)` or `OMP_WAIT_POLICY=PASSIVE`: the ops
    are small, and OpenMP threads spin-waiting for a busy core slow the flow down by more than 10x.
    """

    def __init__(self, model: CSPNetModel, scheduler: CrystalFlowScheduler):
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> CrystalRefinerPipeline:
        """Load from a local folder or a Hub id (with `revision`, `cache_dir`, `token`, ...).

        diffusers' own Hub download only accepts components of libraries it knows (or whose source file is in the
        repo), not `hf_crystal.refiner...`, so a Hub repo is downloaded with huggingface_hub and loaded as a folder.
        A refiner embedded in the package (`hf_crystal.embedded`) loads from its folder, unless `revision` names
        another revision than "main".
        """
        folder = embedded.embedded_folder(pretrained_model_name_or_path, kwargs.get("revision"))
        if folder is not None:
            kwargs.pop("revision", None)
            pretrained_model_name_or_path = folder
        elif not os.path.isdir(pretrained_model_name_or_path):
            download = {key: kwargs.pop(key) for key in _DOWNLOAD_OPTIONS if key in kwargs}
            with offline_errors(pretrained_model_name_or_path):
                pretrained_model_name_or_path = snapshot_download(
                    str(pretrained_model_name_or_path), **download
                )
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights (hf_crystal.hub_access)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        structures: Sequence[Structure],
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        generator: torch.Generator | None = None,
        symmetry_tolerance: float | None = DEFAULT_SYMMETRY_TOLERANCE,
        return_dict: bool = True,
    ) -> CrystalRefinerPipelineOutput | tuple[list[Structure]]:
        """Refine `structures` (ordered pymatgen structures), `batch_size` at a time.

        Each cell is Niggli-reduced first (angles then lie inside the refiner's interval); coordinates and lattice
        are integrated with `num_inference_steps` Euler steps. Shows a progress bar over batches. A refiner whose
        scheduler starts from the uniform base (`base_distribution="uniform"`) keeps only the atoms of the
        structures and draws positions and lattice with `generator`; `base_noise_std` jitters the given
        coordinates with `generator`.

        With `symmetry_tolerance` (Å; None turns it off), the refiner keeps each structure's space group
        (DiffCSP++'s idea in FlowLLM's refiner): the operations spglib finds on the Niggli-reduced cell are kept
        by one projection of the structure, of the base noise, of every Euler step and of the velocity before it
        (`hf_crystal.symmetry.SymmetryProjector`); where none are found at the tolerance, a tenth or a
        hundredth of it, the structure is refined without projection (`symmetry_cases` says which). A projected
        structure whose output is structurally invalid (two atoms closer than 0.5 Å, or a cell under 0.1 Å^3) is
        refined again at every rung of the ladder below its own (a tenth of the tolerance, a hundredth, without
        projection; all in one flow after the batches) and keeps the highest whose output is valid: symmetry is
        kept where it does not cost validity. A refiner from the uniform base ignores
        `symmetry_tolerance`: it uses only the atoms of the structures, not their positions.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        if symmetry_tolerance is not None and not symmetry_tolerance > 0:
            raise ValueError(f"symmetry_tolerance must be positive or None, got {symmetry_tolerance}")
        if self.scheduler.config.base_distribution == "uniform":
            symmetry_tolerance = None  # the given positions are not used, nor is their symmetry
        refined, cases, reduced = [], [], []
        batches = [structures[i : i + batch_size] for i in range(0, len(structures), batch_size)]
        for chunk in self.progress_bar(batches):
            if symmetry_tolerance is None:
                refined += self._refine(CrystalBatch.from_structures(chunk), num_inference_steps, generator)
                continue
            from hf_crystal.symmetry import symmetrize_structures

            reduced += [niggli_reduced(s) for s in chunk]
            symmetrized = symmetrize_structures(reduced[-len(chunk) :], symmetry_tolerance)
            cases += symmetrized.cases
            batch = CrystalBatch.from_structures(symmetrized.structures, niggli=False)
            refined += self._refine(batch, num_inference_steps, generator, symmetrized.projector)
        if symmetry_tolerance is not None:
            self._retry_invalid(
                reduced, refined, cases, symmetry_tolerance, num_inference_steps, batch_size, generator
            )
        if not return_dict:
            return (refined,)
        return CrystalRefinerPipelineOutput(
            structures=refined, symmetry_cases=cases if symmetry_tolerance else None
        )

    def _refine(
        self, batch: CrystalBatch, num_inference_steps: int, generator: torch.Generator | None, project=None
    ) -> list[Structure]:
        """Refine `batch`; with a `hf_crystal.symmetry.SymmetryProjector` `project`, keeping its operations:
        projected base noise, velocities and steps, and a last projection in float64 and in the metric (the
        flow's angle interval may have kept a lattice from being exactly symmetric)."""
        batch = self.scheduler.sample_base(batch, generator, project=project)
        batch = batch.to(self.device, self.model.dtype)
        out = self._integrate(batch, num_inference_steps, project)
        return out.to_structures(None if project is None else project.project_end)

    def _retry_invalid(
        self,
        reduced: list[Structure],
        refined: list[Structure],
        cases: list[str],
        tolerance: float,
        num_inference_steps: int,
        batch_size: int,
        generator: torch.Generator | None,
    ) -> None:
        """Refine again each projected structure whose output is structurally invalid (CDVAE: two atoms closer
        than 0.5 Å or a cell under 0.1 Å^3; mostly samples written with two atoms a few hundredths of an Å apart on
        special positions, which the constrained flow cannot always separate) at every rung of the symmetry ladder
        below its own, all in one flow, and keep the highest rung whose output is valid (else the plain flow's).
        Updates `refined` and `cases` in place."""
        from hf_crystal.symmetry import SYMMETRIZE_CASES, structurally_valid, symmetrize_structures

        pending = [i for i, s in enumerate(refined) if cases[i] != "plain" and not structurally_valid(s)]
        jobs = [
            (i, rung) for i in pending for rung in SYMMETRIZE_CASES[SYMMETRIZE_CASES.index(cases[i]) + 1 :]
        ]
        retried = {}  # (structure, case it ended in) -> refined output; a rung that fell to a lower one repeats it
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            symmetrized = symmetrize_structures(
                [reduced[i] for i, _ in chunk], tolerance, first=[rung for _, rung in chunk]
            )
            batch = CrystalBatch.from_structures(symmetrized.structures, niggli=False)
            out = self._refine(batch, num_inference_steps, generator, symmetrized.projector)
            for (i, _), structure, case in zip(chunk, out, symmetrized.cases, strict=True):
                retried.setdefault((i, case), structure)
        for i in pending:
            for case in SYMMETRIZE_CASES[SYMMETRIZE_CASES.index(cases[i]) + 1 :]:
                structure = retried.get((i, case))
                if structure is not None and (case == "plain" or structurally_valid(structure)):
                    refined[i], cases[i] = structure, f"{case} (retried)"
                    break

    def _integrate(self, batch: CrystalBatch, num_inference_steps: int, project=None) -> CrystalBatch:
        """Euler steps. With a `SymmetryProjector` `project`, the coordinate velocity is projected before each
        step and the state after it."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        frac_coords, lattice = batch.frac_coords, batch.lattice
        for t in self.scheduler.timesteps:
            velocity = self.model(
                batch.atom_types, frac_coords, lattice, t.expand(batch.num_crystals), batch.crystal_index
            )
            if project is not None:
                coord_velocity, lattice_velocity = velocity.to_tuple()
                velocity = (project.project_velocity(coord_velocity), lattice_velocity)
            frac_coords, lattice = self.scheduler.step(velocity, t, (frac_coords, lattice), return_dict=False)
            if project is not None:
                frac_coords, lattice = project(frac_coords, lattice)
        return batch.replace(frac_coords=frac_coords, lattice=lattice)


def refine(
    structures: Sequence[Structure],
    refiner: CrystalRefinerPipeline | str | os.PathLike,
    num_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    revision: str | None = None,
    seed: int | None = None,
    symmetry_tolerance: float | None = DEFAULT_SYMMETRY_TOLERANCE,
) -> list[Structure]:
    """Refined copies of `structures`; `refiner` is a pipeline, a local folder or a Hub id (at `revision`).

    `seed` makes the base noise (or the uniform base) reproducible; None draws from torch's global generator.
    `symmetry_tolerance` (Å) keeps each structure's space group found at that tolerance (None: off); see
    `CrystalRefinerPipeline.__call__`.
    """
    if not isinstance(refiner, CrystalRefinerPipeline):
        refiner = CrystalRefinerPipeline.from_pretrained(refiner, revision=revision)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return refiner(
        structures,
        num_inference_steps=num_steps,
        batch_size=batch_size,
        generator=generator,
        symmetry_tolerance=symmetry_tolerance,
    ).structures
