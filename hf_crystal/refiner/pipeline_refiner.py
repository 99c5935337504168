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
from hf_crystal.refiner.batching import CrystalBatch
from hf_crystal.refiner.modeling_cspnet import CSPNetModel
from hf_crystal.refiner.scheduling_crystal_flow import CrystalFlowScheduler

# FlowMM samples with 1000 Euler steps. For the MP-20 refiner in models/, 10 steps were as good as 100 and
# 1000 (structural validity 0.855 / 0.836 / 0.836 of 256 LLM samples, match to CHGNet-relaxed 0.68 / 0.67 at
# 10 / 100 steps; benchmarks/refiner_sizes.py) at a tenth of the cost (benchmarks/bench_refiner.py).
DEFAULT_NUM_INFERENCE_STEPS = 10
# Crystals integrated together; on a CPU, 64 MP-20-sized crystals gave the best throughput (bench_refiner.py).
DEFAULT_BATCH_SIZE = 64
# `from_pretrained` options that concern the download of a Hub repo.
_DOWNLOAD_OPTIONS = ("revision", "cache_dir", "token", "force_download", "local_files_only")


@dataclass
class CrystalRefinerPipelineOutput(BaseOutput):
    """Refined structures.

    Args:
        structures (`list[Structure]`): One per input, in input order, with the input's elements in the input's
            site order (of the Niggli-reduced cell).
    """

    structures: list[Structure]


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
        return_dict: bool = True,
    ) -> CrystalRefinerPipelineOutput | tuple[list[Structure]]:
        """Refine `structures` (ordered pymatgen structures), `batch_size` at a time.

        Each cell is Niggli-reduced first (angles then lie inside the refiner's interval); coordinates and lattice
        are integrated with `num_inference_steps` Euler steps. Shows a progress bar over batches. A refiner whose
        scheduler starts from the uniform base (`base_distribution="uniform"`) keeps only the atoms of the
        structures and draws positions and lattice with `generator`; `base_noise_std` jitters the given
        coordinates with `generator`.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        refined = []
        batches = [structures[i : i + batch_size] for i in range(0, len(structures), batch_size)]
        for chunk in self.progress_bar(batches):
            batch = self.scheduler.sample_base(CrystalBatch.from_structures(chunk), generator)
            batch = batch.to(self.device, self.model.dtype)
            refined.extend(self._integrate(batch, num_inference_steps).to_structures())
        if not return_dict:
            return (refined,)
        return CrystalRefinerPipelineOutput(structures=refined)

    def _integrate(self, batch: CrystalBatch, num_inference_steps: int) -> CrystalBatch:
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        frac_coords, lattice = batch.frac_coords, batch.lattice
        for t in self.scheduler.timesteps:
            velocity = self.model(
                batch.atom_types, frac_coords, lattice, t.expand(batch.num_crystals), batch.crystal_index
            )
            frac_coords, lattice = self.scheduler.step(velocity, t, (frac_coords, lattice), return_dict=False)
        return batch.replace(frac_coords=frac_coords, lattice=lattice)


def refine(
    structures: Sequence[Structure],
    refiner: CrystalRefinerPipeline | str | os.PathLike,
    num_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    revision: str | None = None,
    seed: int | None = None,
) -> list[Structure]:
    """Refined copies of `structures`; `refiner` is a pipeline, a local folder or a Hub id (at `revision`).

    `seed` makes the base noise (or the uniform base) reproducible; None draws from torch's global generator.
    """
    if not isinstance(refiner, CrystalRefinerPipeline):
        refiner = CrystalRefinerPipeline.from_pretrained(refiner, revision=revision)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return refiner(
        structures, num_inference_steps=num_steps, batch_size=batch_size, generator=generator
    ).structures
