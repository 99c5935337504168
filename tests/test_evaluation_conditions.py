"""Condition satisfaction on hand-made cases with known answers."""

import pytest
from factories import rocksalt
from pymatgen.core import Lattice, Structure

from hf_crystal.evaluation.conditions import (
    ConditionError,
    condition_counts,
    condition_flags,
    parse_sample_conditions,
    spacegroup_number,
)


def test_rock_salt_is_found_in_its_space_group_at_both_tolerances():
    conventional = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    flags = condition_flags(rocksalt(), {"spacegroup": 225}, relaxed=conventional)
    assert flags["spacegroup_0.1"] == flags["spacegroup_0.01"] == 225
    assert (
        flags["spacegroup_0.1_hit"] and flags["spacegroup_0.01_hit"] and flags["spacegroup_relaxed_0.01_hit"]
    )


def test_a_small_distortion_is_a_hit_only_at_the_loose_tolerance():
    distorted = rocksalt()
    distorted.translate_sites([0], [0.005, 0, 0])  # ~0.02 Å off the ideal site
    assert spacegroup_number(distorted, 0.1) == 225
    assert spacegroup_number(distorted, 0.01) != 225


def test_formula_reduced_and_cell_matches():
    doubled = rocksalt().make_supercell([2, 1, 1], in_place=False)  # Na8Cl8
    assert condition_flags(doubled, {"formula": "NaCl"}) == {
        "formula_reduced_match": True,
        "formula_cell_match": False,
    }
    assert condition_flags(doubled, {"formula": "Na8Cl8"})["formula_cell_match"]
    wrong = condition_flags(rocksalt(), {"formula": "KCl"})
    assert not wrong["formula_reduced_match"] and not wrong["formula_cell_match"]
    unread = condition_flags(None, {"formula": "NaCl", "spacegroup": 225})
    assert not unread["formula_reduced_match"] and not unread["spacegroup_0.1_hit"]


def test_whole_cell_is_checked_against_the_cell_asked_for():
    doubled = rocksalt().make_supercell([2, 1, 1], in_place=False)  # Na8Cl8
    assert condition_flags(doubled, {"formula": "NaCl", "formula_units": 8})["formula_cell_match"]
    assert not condition_flags(doubled, {"formula": "NaCl", "formula_units": "cell"})["formula_cell_match"]
    free = condition_flags(doubled, {"formula": "Na2Cl2", "formula_units": "any"})
    assert free == {"formula_reduced_match": True, "formula_cell_match": None}  # any Z: the whole cell is n/a
    conditions = [
        {"formula": "Na8Cl8", "formula_units": "any"},
        {"formula": "Na4Cl4", "formula_units": "cell"},
    ]
    counts = condition_counts(conditions, [condition_flags(doubled, c) for c in conditions])
    assert counts["cond_formula_reduced"] == (2, 2) and counts["cond_formula_n"] == 2
    assert counts["cond_formula_cell"] == (0, 1) and counts["cond_formula_cell_n"] == 1
    with pytest.raises(ConditionError, match="positive integer"):
        parse_sample_conditions({"formula": "NaCl", "formula_units": "some"})


def test_numeric_conditions_error_and_tolerance():
    asked = {"e_above_hull": 0.0, "formation_energy_per_atom": -2.0, "band_gap": 1.0}
    flags = condition_flags(
        rocksalt(), asked, achieved={"e_above_hull": 0.03, "formation_energy_per_atom": -1.7}
    )
    assert flags["e_above_hull_achieved"] == 0.03 and flags["e_above_hull_within"]
    assert not flags["formation_energy_per_atom_within"]  # off by 0.3 eV/atom > 0.1
    assert flags["band_gap_achieved"] is None and not flags["band_gap_within"]  # no predictor


def test_counts_use_every_requesting_sample_as_denominator():
    conditions = [{"formula": "NaCl"}, {"formula": "NaCl"}, {}, {"e_above_hull": 0.0}, {"e_above_hull": 0.0}]
    flags = [
        condition_flags(rocksalt(), conditions[0]),
        condition_flags(None, conditions[1]),  # unreadable: a miss
        {},
        condition_flags(rocksalt(), conditions[3], achieved={"e_above_hull": 0.2}),
        condition_flags(rocksalt(), conditions[4]),  # not relaxed: no value
    ]
    counts = condition_counts(conditions, flags)
    assert counts["cond_formula_n"] == 2 and counts["cond_formula_reduced"] == (1, 2)
    assert counts["cond_e_above_hull_n"] == 2 and counts["cond_e_above_hull_measured"] == 1
    assert counts["cond_e_above_hull_mae"] == pytest.approx(0.2)
    assert counts["cond_e_above_hull_within"] == (0, 2)
    assert "cond_spacegroup_n" not in counts


def test_bad_conditions_are_typed_errors():
    assert parse_sample_conditions("") == {} and parse_sample_conditions('{"spacegroup": 225}') == {
        "spacegroup": 225
    }
    with pytest.raises(ConditionError, match="JSON object"):
        parse_sample_conditions("[1, 2]")
    with pytest.raises(ConditionError, match="unknown condition"):
        parse_sample_conditions({"colour": "red"})


def test_compute_metrics_reports_satisfaction_with_intervals():
    from hf_crystal.evaluation.metrics import compute_metrics

    kcl = Structure(Lattice.cubic(3.8), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # CsCl type, 221
    result = compute_metrics(
        [rocksalt(), kcl],
        [rocksalt()],
        relax=False,
        conditions=['{"formula": "NaCl", "spacegroup": 225}', {"formula": "NaCl", "spacegroup": 225}],
        unreadable_conditions=[{"formula": "NaCl"}],
        progress=False,
    )
    m = result.metrics
    assert m["cond_formula_n"] == 3 and m["cond_formula_reduced"] == pytest.approx(1 / 3)
    assert m["cond_spacegroup_n"] == 2 and m["cond_spacegroup_0.1"] == pytest.approx(1 / 2)
    low, high = m["cond_formula_reduced_ci95"]
    assert 0 < low < 1 / 3 < high < 1
    assert result.rows[1]["conditions"] == '{"formula": "NaCl", "spacegroup": 225}'
    assert not any(key.startswith("cond_spacegroup_relaxed") for key in m)  # not measured without relaxation
    with pytest.raises(ValueError, match="1 condition sets for 2 samples"):
        compute_metrics([rocksalt(), kcl], [rocksalt()], relax=False, conditions=[{}], progress=False)
