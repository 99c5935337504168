"""Convex hull, E_hull and MP2020 correction on hand-made entries (no relaxation)."""

import json

import pytest
from factories import rocksalt
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from hf_crystal.evaluation.hull_build import elemental_reference_structures
from hf_crystal.evaluation.stability import (
    HullError,
    HullReference,
    corrected_entries,
    load_entries,
    load_hull,
    mp2020_parameters,
    stability_flags,
)


def _tiny_entries():
    # Na -1 eV/atom, Cl -2 eV/atom, NaCl -2.5 eV/atom (formation -1 eV/atom): the hull.
    # NaCl3 at -2.2 eV/atom lies 0.05 eV/atom above the NaCl-Cl tie line (-2.25 eV/atom at x_Cl = 3/4).
    return [
        ComputedEntry("Na", -1.0, entry_id="na"),
        ComputedEntry("Cl", -2.0, entry_id="cl"),
        ComputedEntry("Na2Cl2", -10.0, entry_id="nacl"),
        ComputedEntry("NaCl3", -8.8, entry_id="nacl3"),
    ]


def test_e_above_hull_known_answers():
    hull = HullReference(_tiny_entries(), "tiny")
    assert hull.n_entries == 4
    assert hull.e_above_hull(ComputedEntry("NaCl3", -8.8)) == pytest.approx(0.05)
    # NaCl2 at -7.0 eV: tie line NaCl + Cl gives (-5 - 2) / 3 = -2.3333 eV/atom, so E_hull = 0.
    assert hull.e_above_hull(ComputedEntry("NaCl2", -7.0)) == pytest.approx(0.0, abs=1e-9)
    # A NaCl polymorph 0.1 eV/atom lower sits below the hull: negative E_hull.
    assert hull.e_above_hull(ComputedEntry("NaCl", -5.2)) == pytest.approx(-0.1)
    assert hull.e_above_hull(ComputedEntry("Na", -0.5)) == pytest.approx(0.5)


def test_missing_element_is_a_hull_error():
    hull = HullReference(_tiny_entries(), "tiny")
    with pytest.raises(HullError, match="no elemental reference for K"):
        hull.e_above_hull(ComputedEntry("KCl", -6.0))


@pytest.mark.parametrize("shape", ["list", "mapping", "table"])
def test_load_entries_file_shapes(tmp_path, shape):
    dicts = [e.as_dict() for e in _tiny_entries()]
    data = {
        "list": dicts,
        "mapping": {d["entry_id"]: d for d in dicts},
        "table": {"entry": {d["entry_id"]: d for d in dicts}, "formula": {d["entry_id"]: "x" for d in dicts}},
    }[shape]
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(data))
    hull = HullReference(load_entries(path), "file")
    assert hull.e_above_hull(ComputedEntry("NaCl3", -8.8)) == pytest.approx(0.05)
    lazy = load_hull(path)  # entry dicts, decoded per chemical system when needed
    assert lazy.description == "user-supplied entries: entries.json" and lazy.n_entries == 4
    assert lazy.covers(["Na", "Cl"]) and lazy.e_above_hull(ComputedEntry("NaCl3", -8.8)) == pytest.approx(
        0.05
    )


def test_load_entries_errors(tmp_path):
    with pytest.raises(HullError, match="not found"):
        load_entries(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text(json.dumps([{"a": 1}]))
    with pytest.raises(HullError, match="no pymatgen entry"):
        load_entries(tmp_path / "x.json")
    pd_entry = {"@module": "pymatgen.analysis.phase_diagram", "@class": "PDEntry", "composition": {"Na": 1}}
    (tmp_path / "pd.json").write_text(json.dumps([pd_entry | {"energy": -1.0}]))
    with pytest.raises(HullError, match="1 objects .*PDEntry.* are not ComputedEntry"):
        load_hull(tmp_path / "pd.json")


def test_mp2020_correction_of_ml_energies():
    feo = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    params = mp2020_parameters(feo)
    assert params["run_type"] == "GGA+U" and params["hubbards"]["Fe"] == pytest.approx(5.3)
    nacl = rocksalt()
    na = Structure(Lattice.cubic(4.2), ["Na", "Na"], [[0, 0, 0], [0.5] * 3])
    fe_o, na_cl, na_metal, missing = corrected_entries([feo, nacl, na, None], [-10.0, -20.0, -2.6, -1.0])
    names = {a.name for a in fe_o.energy_adjustments}
    assert any("oxide" in n for n in names) and any("mixing" in n for n in names)
    assert na_cl.correction == pytest.approx(4 * -0.614)  # MP2020 Cl anion correction per Cl atom
    assert na_metal.correction == 0.0 and na_metal.energy == pytest.approx(-2.6)
    assert missing is None
    assert corrected_entries([nacl], [float("nan")]) == [None]


def test_elemental_reference_states():
    ((o2, relax_cell),) = elemental_reference_structures("O")
    assert not relax_cell and o2.composition.reduced_formula == "O2" and o2.volume > 1000
    assert o2.get_distance(0, 1) == pytest.approx(1.21)
    ((cu, relax_cell),) = elemental_reference_structures("Cu")
    assert relax_cell and len(cu) == 1 and cu.lattice.a == pytest.approx(3.61 / 2**0.5, abs=0.01)
    boron = elemental_reference_structures("B")  # ASE knows B's structure but has no basis for it
    assert len(boron) == 5 and all(rc for _, rc in boron)


def test_stability_flags():
    assert stability_flags(0.05, 2) == {"metastable": True, "stable": False}
    assert stability_flags(-0.01, 2) == {"metastable": True, "stable": True}
    assert stability_flags(-0.01, 1) == {"metastable": True, "stable": False}
    assert stability_flags(float("nan"), 3) == {"metastable": False, "stable": False}


class _RecordingRelaxer:
    """Returns every structure unchanged at -3 eV/atom (below the tiny hull) and records what it was asked to relax."""

    def __init__(self):
        self.seen = []

    def relax(self, structures, progress=False, desc=""):
        from hf_crystal.evaluation.relax import RelaxResult

        self.seen += [s.composition.reduced_formula for s in structures]
        return [RelaxResult(s, -3.0 * len(s), -1.0 * len(s), 3, True, len(s)) for s in structures]


@pytest.mark.parametrize("relax_invalid", [False, True])
def test_structurally_invalid_samples_are_not_relaxed_by_default(relax_invalid):
    from hf_crystal.evaluation.metrics import compute_metrics

    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5] * 3, [0.5] * 3])
    relaxer = _RecordingRelaxer()
    result = compute_metrics(
        [rocksalt(), overlapping],
        [rocksalt()],
        hull_entries=_tiny_entries(),
        relaxer=relaxer,
        relax_invalid=relax_invalid,
        progress=False,
    )
    assert relaxer.seen == (["NaCl", "NaCl2"] if relax_invalid else ["NaCl"])
    assert result.metrics["n_relaxed"] == (2 if relax_invalid else 1)
    valid_row, invalid_row = result.rows
    assert valid_row["relax_error"] is None and valid_row["metastable"]
    if not relax_invalid:
        assert invalid_row["relax_error"].startswith("not relaxed: structurally invalid")
        assert not invalid_row["metastable"] and not invalid_row["stable"]
    # Rates count all samples: the unrelaxed one is not metastable.
    assert result.metrics["metastable_rate"] == (sum(r["metastable"] for r in result.rows) / 2)
