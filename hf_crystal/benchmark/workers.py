"""What runs on Ray's workers: the generation and relaxation actors and the per-shard tasks.

Plain classes and functions (``hf_crystal.benchmark.runner`` wraps them with ``ray.remote``), each running one
torch thread and one BLAS thread, so that a shard's result depends only on its inputs and its seed, never on
how many workers share the machine. Every function returns ``(shard id, JSON-ready result)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from pymatgen.core import Structure


def _one_thread() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)


class Generator:
    """One crystal-generation pipeline (model, tokenizer and refiner) per actor.

    Args:
        model (`str`): folder or Hub id of a model or adapter.
        refiner (`str`, *optional*): folder or Hub id of a refiner, or None for the LLM's samples.
        options (`dict`): pipeline call options (sampling, ``batch_size``, ``constrain``, ...).
    """

    def __init__(self, model: str, refiner: str | None, options: dict):
        _one_thread()
        from transformers import pipeline

        import hf_crystal  # noqa: F401  (registers the crystal-generation task)
        from hf_crystal.loading import load_crystal_model

        llm, tokenizer = load_crystal_model(model, merge=True)
        self.pipe = pipeline("crystal-generation", model=llm, tokenizer=tokenizer, refiner=refiner)
        self.options = options

    def generate(self, shard: int, count: int, seed: int) -> tuple[int, list[dict]]:
        """``count`` unconditional samples drawn with ``seed`` (pipeline sample dicts)."""
        return shard, self.pipe({}, num_return_sequences=count, seed=seed, **self.options)


class Relaxer:
    """A ``BatchedRelaxer`` (CHGNet) per actor; ``settings`` are its keyword arguments."""

    def __init__(self, settings: dict):
        _one_thread()
        from hf_crystal.evaluation.relax import BatchedRelaxer

        self.relaxer = BatchedRelaxer(**settings)

    def relax(self, shard: int, structures: Sequence[Structure]) -> tuple[int, list[dict]]:
        """``RelaxResult.to_dict()`` of each structure, in order."""
        return shard, [r.to_dict() for r in self.relaxer.relax(structures, progress=False)]


def features(shard: int, structures: Sequence[Structure], validity: bool = True) -> tuple[int, dict]:
    """Validity flags (``validity.validity_flags``, when ``validity``) and CrystalNN / Magpie fingerprints
    (``coverage.fingerprints``) of ``structures``; failed fingerprints are None rows."""
    _one_thread()
    from hf_crystal.evaluation.coverage import fingerprints
    from hf_crystal.evaluation.validity import validity_flags

    out = {}
    if validity:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["flags"] = [validity_flags(s) for s in structures]
    struct_fps, comp_fps, ok = fingerprints(list(structures))
    out["struct"] = [row.tolist() if good else None for row, good in zip(struct_fps, ok, strict=True)]
    out["comp"] = [row.tolist() if good else None for row, good in zip(comp_fps, ok, strict=True)]
    return shard, out


def novelty(
    shard: int, structures: Sequence[Structure], train: Sequence[Structure]
) -> tuple[int, list[bool]]:
    """``novelty.novel_flags`` of ``structures`` against ``train`` (the training structures of their formulas)."""
    _one_thread()
    from hf_crystal.evaluation.novelty import novel_flags

    return shard, novel_flags(list(structures), list(train))


def uniqueness(shard: int, groups: Sequence[Sequence[Structure]]) -> tuple[int, list[list[bool]]]:
    """``novelty.unique_flags`` within each group of same-formula structures (in sample order)."""
    _one_thread()
    from hf_crystal.evaluation.novelty import unique_flags

    return shard, [unique_flags(list(group)) for group in groups]


def space_groups(
    shard: int, structures: Sequence[Structure], symprecs: Sequence[float]
) -> tuple[int, dict[str, list[int | None]]]:
    """Space-group number of each structure at each symprec (``symmetry.space_groups``; None: undetermined)."""
    _one_thread()
    from hf_crystal.evaluation.symmetry import space_groups as groups

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return shard, {f"{p:g}": groups(list(structures), p) for p in symprecs}
