"""Evaluation of generated crystals (CDVAE's metrics, Xie et al. 2022): validity, coverage, distributions, uniqueness and novelty,
stability against a convex hull via batched CHGNet relaxation, distance to relaxed, IPT, and reports.

Modules: ``validity``, ``coverage``, ``distributions``, ``novelty``, ``relax`` (batched CHGNet relaxer),
``stability`` (MP2020 correction, hulls, E_hull), ``ipt``, ``metrics`` (``compute_metrics``: the whole
evaluation as numbers, no files), ``report`` (``write_report``: metrics.json, samples.csv, relaxed.cif,
report.md and plots) and ``defaults`` (relaxation defaults). Everything takes and returns pymatgen
``Structure``. The ``hf-crystal evaluate`` command is ``hf_crystal.commands.evaluate``.

Importing this package loads nothing heavy: the public names below (scipy, SMACT, matminer, CHGNet behind
them) load on first access.
"""

import importlib

_LAZY = {
    "EvaluationResult": "hf_crystal.evaluation.metrics",
    "compute_metrics": "hf_crystal.evaluation.metrics",
    "write_report": "hf_crystal.evaluation.report",
    "composition_validity": "hf_crystal.evaluation.validity",
    "default_matcher": "hf_crystal.evaluation.novelty",
    "distribution_distances": "hf_crystal.evaluation.distributions",
    "novel_flags": "hf_crystal.evaluation.novelty",
    "structure_validity": "hf_crystal.evaluation.validity",
    "unique_flags": "hf_crystal.evaluation.novelty",
    "validity_flags": "hf_crystal.evaluation.validity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_crystal.evaluation' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
