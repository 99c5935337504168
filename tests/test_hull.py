"""Hull coverage, Wilson intervals, rates over covered samples and `hf-crystal hull build` (tiny inputs)."""

import gzip
import json

import pytest
from factories import rocksalt
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.io.cif import CifWriter

from hf_crystal.commands import main
from hf_crystal.evaluation.metrics import METRICS, compute_metrics, wilson_interval
from hf_crystal.evaluation.stability import HullReference, load_entries, load_hull


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
     (29, 29, 0.8830, 1.0)],
)  # fmt: skip
def test_wilson_interval_known_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges():
    assert all(x != x for x in wilson_interval(0, 0))  # NaN: no denominator
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)


def _hull_entries():
    # Na-Cl has a compound (NaCl); K-Cl and Na-K only their elements.
    return [
        ComputedEntry("Na", -1.0),
        ComputedEntry("K", -1.0),
        ComputedEntry("Cl", -2.0),
        ComputedEntry("NaCl", -5.0),
    ]


def test_hull_coverage_flags():
    hull = HullReference(_hull_entries(), "tiny")
    assert hull.covers(["Na", "Cl"]) and hull.covers(["Cl", "Na"])
    assert hull.covers(["Na", "Cl", "O"])  # NaCl lies in a subsystem of Na-Cl-O
    assert not hull.covers(["K", "Cl"])  # only elemental references
    assert not hull.covers(["Na"])  # a single element: no compound in its system
    assert not hull.covers(["Na", "K"])


class _FixedEnergyRelaxer:
    """Returns every structure unchanged at ``energy`` eV/atom."""

    def __init__(self, energy: float):
        self.energy = energy

    def relax(self, structures, progress=False, desc=""):
        from hf_crystal.evaluation.relax import RelaxResult

        return [
            RelaxResult(s, self.energy * len(s), self.energy * len(s), 1, True, len(s)) for s in structures
        ]


def test_rates_over_covered_samples_with_denominators():
    kcl = Structure(Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5] * 3])
    na = Structure(Lattice.cubic(4.2), ["Na", "Na"], [[0, 0, 0], [0.5] * 3])
    # At -3 eV/atom: NaCl is 0.5 eV/atom below the NaCl entry (stable), KCl 1.5 below the K-Cl tie line
    # (stable against elements only), Na 2 eV/atom below its reference (metastable; unary, so not stable).
    result = compute_metrics(
        [rocksalt(), kcl, na],
        [rocksalt()],
        [kcl],  # KCl is not novel
        n_unreadable=1,
        hull_entries=_hull_entries(),
        relaxer=_FixedEnergyRelaxer(-3.0),
        progress=False,
    )
    m = result.metrics
    assert [r["hull_covered"] for r in result.rows] == [True, False, False]
    assert m["n_stability"] == 4 and m["n_hull_covered"] == 1
    assert m["hull_coverage"] == pytest.approx(1 / 4)
    assert m["hull_coverage_ci95"] == pytest.approx(list(wilson_interval(1, 4)))
    assert m["metastable_rate"] == pytest.approx(3 / 4) and m["stable_rate"] == pytest.approx(2 / 4)
    assert m["sun_rate"] == pytest.approx(1 / 4)  # NaCl: stable, unique, novel
    assert m["stable_rate_ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    for key in ("metastable", "stable", "sun"):
        assert m[f"{key}_rate_covered"] == 1.0
        assert m[f"{key}_rate_covered_ci95"] == pytest.approx(list(wilson_interval(1, 1)))
    assert {k for k in m if "covered" in k or k.endswith("_ci95")} <= set(METRICS)


def test_report_warns_when_coverage_is_below_one_half(tmp_path):
    from hf_crystal.evaluation.report import write_report

    kcl = Structure(Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5] * 3])
    args = {"hull_entries": _hull_entries(), "relaxer": _FixedEnergyRelaxer(-3.0), "progress": False}
    low = compute_metrics([kcl, kcl.copy()], [rocksalt()], **args)
    assert low.metrics["hull_coverage"] == 0.0 and low.metrics["stable_rate_covered"] is None
    report = write_report(low, tmp_path / "low") / "report.md"
    assert "Warning: the hull covers fewer than half" in report.read_text()
    high = compute_metrics([rocksalt(), kcl], [rocksalt()], **args)  # coverage exactly 1/2: no warning
    text = (write_report(high, tmp_path / "high") / "report.md").read_text()
    assert "Warning" not in text and "Hull coverage: 1 of 2 samples" in text


def _sources(tmp_path):
    """A CIF folder with NaCl, a CsCl-type NaCl duplicate id, an isolated-atom cell and a broken file."""
    folder = tmp_path / "src"
    folder.mkdir()
    CifWriter(rocksalt().get_primitive_structure()).write_file(folder / "nacl.cif")
    cscl = Structure(Lattice.cubic(2.9), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    CifWriter(cscl).write_file(folder / "nacl_cscl.cif")
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])  # no neighbour within 6 Å
    CifWriter(lonely).write_file(folder / "lonely.cif")
    (folder / "zz_broken.cif").write_text("data_broken\n_cell_length_a 3\nnonsense\n")
    return folder


def test_hull_build_writes_a_loadable_file_and_resumes(tmp_path, monkeypatch):
    import hf_crystal.evaluation.hull_build as hull_build

    folder = _sources(tmp_path)
    again = tmp_path / "again"  # a second source holding NaCl under the same id
    again.mkdir()
    (again / "nacl.cif").write_text((folder / "nacl.cif").read_text())
    out = tmp_path / "hull.json.gz"
    argv = [
        "hull",
        "build",
        str(folder),
        str(again),
        "--out",
        str(out),
        "--elements",
        "sources",
    ]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    assert main(argv) == 0
    data = json.loads(gzip.open(out, "rt").read())
    assert data["n_structures"] == 3 and data["n_duplicates"] == 1  # nacl given twice
    assert data["skipped"] == {"unreadable": 1, "graph construction failed": 1}
    assert {name for name, _ in data["skipped_examples"]} == {"zz_broken", "lonely"}
    entries = load_entries(out)
    ids = {e.entry_id for e in entries}
    assert {"nacl", "nacl_cscl"} <= ids and any(i.startswith("ase-reference:Cl") for i in ids)
    assert all(set(d) >= {"energy", "composition"} and "structure" not in d for d in data["entries"])
    nacl = next(e for e in entries if e.entry_id == "nacl")
    assert nacl.correction == pytest.approx(-0.614)  # MP2020 chloride correction, 1 Cl
    hull = load_hull(out)
    assert "static energies of 2 structures" in hull.description and hull.covers(["Na", "Cl"])
    assert hull.e_above_hull(nacl) <= 0.0

    # A second run reuses the finished structures and relaxations: nothing is computed again.
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a finished structure")

    monkeypatch.setattr(hull_build, "static_energies", fail)
    n_cached = len(list((tmp_path / "cache").rglob("*.json")))
    assert main(argv) == 0
    assert len(list((tmp_path / "cache").rglob("*.json"))) == n_cached
    assert json.loads(gzip.open(out, "rt").read()) == data


def test_hull_build_errors(tmp_path, capsys):
    assert main(["hull", "build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "h.json.gz")]) == 2
    assert "source not found" in capsys.readouterr().err
    folder = _sources(tmp_path)
    assert main(["hull", "build", str(folder), "--out", str(tmp_path / "h.json")]) == 2
    assert ".json.gz" in capsys.readouterr().err


def test_static_energies_are_chgnet_energies():
    from chgnet.model import CHGNet

    from hf_crystal.evaluation.hull_build import static_energies

    model = CHGNet.load(verbose=False, use_device="cpu")
    nacl = rocksalt().get_primitive_structure()
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    (energy, error), (missing, why) = static_energies([nacl, lonely], model)
    expected = float(model.predict_structure(nacl, task="e")["e"]) * len(nacl)  # CHGNet predicts eV/atom
    assert error is None and energy == pytest.approx(expected, abs=1e-4)
    assert missing != missing and why.startswith("graph construction failed")


def test_the_shipped_hull_is_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    from hf_crystal.evaluation.stability import SHIPPED_HULL

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["hf_crystal.evaluation"]
    assert any(fnmatch.fnmatch(f"data/{SHIPPED_HULL.name}", g) for g in globs)
    assert SHIPPED_HULL.exists() and SHIPPED_HULL.stat().st_size < 5e6
