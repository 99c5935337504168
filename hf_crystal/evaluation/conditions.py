"""Condition satisfaction: did each sample come out as it was asked for?

Gruver et al. show text conditioning only qualitatively; here every condition a sample was generated for
(the ``conditions`` column that ``hf-crystal generate`` writes, or one set for a whole file) is checked:

- formula: the reduced formula equal to the requested one, and (stricter) the whole-cell counts equal, over
  the samples whose ``formula_units`` fixed the cell ("cell" or an int Z; a formula without ``formula_units``
  counts as "cell", as files written before it existed mean): under "any" the whole cell is n/a;
- spacegroup: spglib's space group (pymatgen's ``SpacegroupAnalyzer``) at symprec 0.1 and 0.01, on the
  generated and on the relaxed structure;
- e_above_hull, formation_energy_per_atom: the CHGNet + MP2020 value of the relaxed sample against the
  hull; the absolute error and whether it lies within ``NUMERIC_TOLERANCES``;
- band_gap: no predictor ships with hf-crystal, so it is counted as requested but not measured.

Denominators are all samples that requested a condition, unreadable and unrelaxed ones included (they
miss); mean absolute errors are over the samples with a measured value, whose number is reported too.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence

from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from hf_crystal.prompts import CONDITIONS, FormulaUnitsError, check_formula_units

__all__ = [
    "NUMERIC_TOLERANCES",
    "SYMPRECS",
    "condition_counts",
    "condition_flags",
    "parse_sample_conditions",
    "spacegroup_number",
]

SYMPRECS = (0.1, 0.01)
# |requested - achieved| within these counts as satisfied (eV/atom; eV for band_gap).
NUMERIC_TOLERANCES = {"e_above_hull": 0.1, "formation_energy_per_atom": 0.1, "band_gap": 0.5}


class ConditionError(ValueError):
    """A sample's conditions cannot be read (not a JSON object, unknown key, wrong value type)."""


def parse_sample_conditions(value: str | dict | None) -> dict:
    """One sample's conditions from the ``conditions`` cell ("" or JSON object) or a dict; checks the keys."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConditionError(f"conditions must be a JSON object, got {value!r}: {exc}") from None
    if not isinstance(value, dict):
        raise ConditionError(f"conditions must be a JSON object, got {value!r}")
    unknown = set(value) - {*CONDITIONS, "formula_units"}
    if unknown:
        raise ConditionError(f"unknown condition(s) {sorted(unknown)}; known: {', '.join(CONDITIONS)}")
    if "formula_units" in value:
        try:
            check_formula_units(value["formula_units"])
        except FormulaUnitsError as exc:
            raise ConditionError(str(exc)) from None
    return value


def spacegroup_number(structure: Structure | None, symprec: float) -> int | None:
    """spglib's space-group number at ``symprec`` (angle tolerance 5°), None if there is no structure or
    spglib fails (degenerate cells)."""
    if structure is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception:  # spglib raises on degenerate input: counted as a miss
        return None


def condition_flags(
    structure: Structure | None,
    conditions: dict,
    *,
    relaxed: Structure | None = None,
    achieved: dict[str, float] | None = None,
) -> dict:
    """Per-sample satisfaction of ``conditions``: ``formula_reduced_match``, ``formula_cell_match`` (None when
    ``formula_units`` is "any"),
    ``spacegroup[_relaxed]_<symprec>`` (the number found) and ``..._hit``, and for numeric conditions
    ``<key>_achieved`` / ``<key>_within`` from ``achieved`` (e.g. {"e_above_hull": 0.03}).
    """
    flags: dict = {}
    if "formula" in conditions:
        wanted = Composition(conditions["formula"])
        units = conditions.get("formula_units", "cell")
        if isinstance(units, int):  # Z formula units of the formula
            wanted = wanted.reduced_composition * units
        have = structure.composition if structure is not None else None
        flags["formula_reduced_match"] = have is not None and have.reduced_formula == wanted.reduced_formula
        flags["formula_cell_match"] = (
            None if units == "any" else have is not None and have.almost_equals(wanted, rtol=0, atol=1e-6)
        )
    if "spacegroup" in conditions:
        for symprec in SYMPRECS:
            for name, s in (("spacegroup", structure), ("spacegroup_relaxed", relaxed)):
                found = spacegroup_number(s, symprec)
                flags[f"{name}_{symprec}"] = found
                flags[f"{name}_{symprec}_hit"] = found == int(conditions["spacegroup"])
    for key in ("e_above_hull", "formation_energy_per_atom", "band_gap"):
        if key in conditions:
            value = (achieved or {}).get(key)
            measured = value is not None and math.isfinite(value)
            flags[f"{key}_achieved"] = value if measured else None
            flags[f"{key}_within"] = measured and abs(value - conditions[key]) <= NUMERIC_TOLERANCES[key]
    return flags


def condition_counts(conditions: Sequence[dict], flags: Sequence[dict]) -> dict:
    """Aggregate per-sample ``condition_flags`` over the samples that requested each condition.

    Returns {name: (count, total)} for rates and {name: value} for the rest: ``cond_<key>_n`` (samples that
    requested it), rates ``cond_formula_reduced``, ``cond_formula_cell`` (over the ``cond_formula_cell_n``
    samples that fixed the whole cell), ``cond_spacegroup[_relaxed]_<symprec>``,
    ``cond_<numeric>_within``, and ``cond_<numeric>_mae`` with ``cond_<numeric>_measured``.
    """
    out: dict = {}
    for key in CONDITIONS:
        picked = [(c, f) for c, f in zip(conditions, flags, strict=True) if key in c]
        if not picked:
            continue
        n = len(picked)
        out[f"cond_{key}_n"] = n
        if key == "formula":
            out["cond_formula_reduced"] = (sum(f["formula_reduced_match"] for _, f in picked), n)
            cells = [f["formula_cell_match"] for _, f in picked if f["formula_cell_match"] is not None]
            out["cond_formula_cell"] = (sum(cells), len(cells))
            out["cond_formula_cell_n"] = len(cells)
        elif key == "spacegroup":
            for name in ("spacegroup", "spacegroup_relaxed"):
                for symprec in SYMPRECS:
                    hits = sum(f.get(f"{name}_{symprec}_hit", False) for _, f in picked)
                    out[f"cond_{name}_{symprec}"] = (hits, n)
        else:
            errors = [
                abs(f[f"{key}_achieved"] - c[key]) for c, f in picked if f.get(f"{key}_achieved") is not None
            ]
            out[f"cond_{key}_measured"] = len(errors)
            out[f"cond_{key}_mae"] = sum(errors) / len(errors) if errors else float("nan")
            out[f"cond_{key}_within"] = (sum(f.get(f"{key}_within", False) for _, f in picked), n)
    return out
