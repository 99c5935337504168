"""`hf-crystal evaluate` end to end on a few hand-made structures."""

import csv
import json

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from hf_crystal.commands import main
from hf_crystal.evaluation.report import METRICS


def _nacl(a=5.64):
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def _kcl():
    return Structure(Lattice.cubic(3.8), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture()
def files(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    moved = _nacl()
    moved.translate_sites(range(len(moved)), [0.1, 0.2, 0.3])
    for name, s in [("a_nacl", _nacl()), ("b_moved", moved), ("c_kcl", _kcl())]:
        CifWriter(s).write_file(samples / f"{name}.cif")
    (samples / "d_broken.cif").write_text("data_broken\n_cell_length_a 3\nnonsense\n")
    reference, train = tmp_path / "reference.cif", tmp_path / "train.cif"
    CifWriter(_nacl(5.5)).write_file(reference)
    CifWriter(_nacl()).write_file(train)
    return samples, reference, train


def _run(files, tmp_path, *extra):
    samples, reference, train = files
    out = tmp_path / "out"
    argv = ["evaluate", str(samples), "--reference", str(reference), "--train", str(train), "--out", str(out)]
    assert main([*argv, "--threads", "1", "--cache-dir", str(tmp_path / "cache"), *extra]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_evaluate_without_relaxation(files, tmp_path):
    out, metrics = _run(files, tmp_path, "--no-relax")
    assert metrics["n_samples"] == 3 and metrics["n_unreadable"] == 1
    assert metrics["struct_valid"] == pytest.approx(3 / 4)  # the unreadable file counts as invalid
    assert metrics["unique_rate"] == pytest.approx(2 / 3)  # the translated copy is a duplicate
    assert metrics["novel_rate"] == pytest.approx(1 / 3)  # only KCl is not in train
    assert metrics["wdist_nary"] == 0.0
    assert "metastable_rate" not in metrics
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert [r["id"] for r in rows] == ["a_nacl", "b_moved", "c_kcl"]
    assert [r["unique"] for r in rows] == ["True", "False", "True"]
    assert (out / "report.md").exists() and (out / "lattice.png").stat().st_size > 1000


def test_evaluate_end_to_end_with_default_hull(files, tmp_path):
    out, metrics = _run(files, tmp_path, "--max-steps", "4")
    assert set(METRICS) <= set(metrics)
    assert metrics["hull"].startswith("self-consistent CHGNet")
    assert metrics["hull_entries"] == 4  # Na and K (bcc), Cl2 in a box, the reference NaCl
    assert metrics["relax_success_rate"] == 1.0
    rows = list(csv.DictReader(open(out / "samples.csv")))
    e_hull = [float(r["e_hull"]) for r in rows]
    assert all(abs(e) < 5 for e in e_hull)
    metastable = sum(e < 0.1 for e in e_hull) / 4  # 4 samples including the unreadable one
    assert metrics["metastable_rate"] == pytest.approx(metastable)
    assert open(out / "relaxed.cif").read().count("data_") == 3
    report = (out / "report.md").read_text()
    assert "self-consistent CHGNet" in report and "e_hull.png" in report and (out / "e_hull.png").exists()
    # A rerun is served by the relaxation cache and gives the same numbers.
    n_cached = len(list((tmp_path / "cache").rglob("*.json")))
    _, again = _run(files, tmp_path, "--max-steps", "4")
    assert len(list((tmp_path / "cache").rglob("*.json"))) == n_cached
    assert again == metrics


def test_missing_reference_is_a_clear_error(files, tmp_path, capsys):
    samples, _, _ = files
    code = main(
        ["evaluate", str(samples), "--reference", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "reference not found" in capsys.readouterr().err


def test_evaluate_api_with_user_entries(tmp_path):
    import torch
    from chgnet.model import CHGNet
    from pymatgen.entries.computed_entries import ComputedEntry

    from hf_crystal.evaluation.relax import BatchedRelaxer
    from hf_crystal.evaluation.report import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        relaxer = BatchedRelaxer(CHGNet.load(verbose=False, use_device="cpu"), max_steps=2)
        entries = [ComputedEntry("Na", -1.3), ComputedEntry("Cl2", -3.6)]  # hull: -1.55 eV/atom at NaCl
        metrics = evaluate([_nacl()], [_nacl()], out_dir=tmp_path, hull_entries=entries, relaxer=relaxer)
    finally:
        torch.set_num_threads(threads)
    assert metrics["hull"] == "user-supplied entries (2)" and metrics["hull_entries"] == 2
    assert metrics["sun_rate"] is None and metrics["novel_rate"] is None  # no training set: unknown
    (row,) = csv.DictReader(open(tmp_path / "samples.csv"))
    assert float(row["e_hull"]) == pytest.approx(float(row["corrected_energy_per_atom"]) + 1.55, abs=1e-9)
    assert metrics["metastable_rate"] == float(float(row["e_hull"]) < 0.1)
