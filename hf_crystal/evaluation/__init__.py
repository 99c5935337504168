"""Evaluation of generated crystals (SPEC 5): validity, coverage, distributions, uniqueness and novelty,
stability against a convex hull via batched CHGNet relaxation, distance to relaxed, IPT, and reports.

Modules: ``validity``, ``coverage``, ``distributions``, ``novelty``, ``relax`` (batched CHGNet relaxer),
``stability`` (MP2020 correction, hulls, E_hull), ``ipt``, ``report`` (the whole ``evaluate`` run) and
``command`` (the ``hf-crystal evaluate`` subcommand). Everything takes and returns pymatgen ``Structure``.
"""

from hf_crystal.evaluation.distributions import distribution_distances
from hf_crystal.evaluation.novelty import default_matcher, novel_flags, unique_flags
from hf_crystal.evaluation.validity import composition_validity, structure_validity, validity_flags

__all__ = [
    "composition_validity",
    "default_matcher",
    "distribution_distances",
    "novel_flags",
    "structure_validity",
    "unique_flags",
    "validity_flags",
]
