"""`hf-crystal evaluate` end to end on a few hand-made structures."""

import csv
import json
import subprocess
import sys

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


def test_evaluate_uses_the_shipped_hull_by_default(files, tmp_path):
    from hf_crystal.evaluation.report import SHIPPED_HULL_CHECK
    from hf_crystal.evaluation.stability import SHIPPED_HULL

    out, metrics = _run(files, tmp_path, "--max-steps", "4")
    assert metrics["hull"].startswith(f"shipped hull {SHIPPED_HULL.name}") and metrics["hull_entries"] > 10000
    assert "hull_skipped" not in metrics and set(METRICS) - {"hull_skipped"} <= set(metrics)
    rows = list(csv.DictReader(open(out / "samples.csv")))
    # MP-20 holds Na-Cl and K-Cl compounds.
    assert [r["hull_covered"] for r in rows] == ["True"] * 3
    assert metrics["n_hull_covered"] == 3 and metrics["n_stability"] == 4  # the unreadable file counts
    assert metrics["hull_coverage"] == pytest.approx(3 / 4)
    report = (out / "report.md").read_text()
    assert metrics["hull"] in report and SHIPPED_HULL_CHECK in report and "Warning" not in report


def test_evaluate_hull_options_are_checked_first(files, tmp_path, capsys):
    samples, reference, _ = files
    argv = ["evaluate", str(samples), "--reference", str(reference), "--out", str(tmp_path / "o")]
    assert main([*argv, "--hull-set", "train"]) == 2
    assert "--hull self-consistent" in capsys.readouterr().err
    assert main([*argv, "--hull", str(tmp_path / "missing.json.gz")]) == 2
    assert "hull entries file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_end_to_end_with_self_consistent_hull(files, tmp_path):
    out, metrics = _run(files, tmp_path, "--max-steps", "4", "--hull", "self-consistent")
    assert set(METRICS) <= set(metrics)
    assert metrics["hull"].startswith("self-consistent CHGNet")
    assert metrics["hull_entries"] == 4  # Na and K (bcc), Cl2 in a box, the reference NaCl
    assert metrics["n_hull_covered"] == 2 and metrics["hull_coverage"] == 0.5  # the NaCl samples, not KCl
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
    _, again = _run(files, tmp_path, "--max-steps", "4", "--hull", "self-consistent")
    assert len(list((tmp_path / "cache").rglob("*.json"))) == n_cached
    assert again == metrics


def test_missing_reference_is_a_clear_error(files, tmp_path, capsys):
    samples, _, _ = files
    code = main(
        ["evaluate", str(samples), "--reference", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "reference not found" in capsys.readouterr().err


def test_compute_metrics_writes_nothing_and_write_report_writes_it_all(tmp_path, monkeypatch):
    from chgnet.model import CHGNet
    from pymatgen.entries.computed_entries import ComputedEntry

    from hf_crystal.evaluation import compute_metrics, write_report
    from hf_crystal.evaluation.relax import BatchedRelaxer

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    relaxer = BatchedRelaxer(CHGNet.load(verbose=False, use_device="cpu"), max_steps=2)  # no cache
    entries = [ComputedEntry("Na", -1.3), ComputedEntry("Cl2", -3.6)]  # hull: -1.55 eV/atom at NaCl
    result = compute_metrics(
        [_nacl(), _kcl()], [_nacl()], sample_ids=["nacl", "kcl"], hull_entries=entries, relaxer=relaxer
    )
    assert list(cwd.iterdir()) == []  # compute_metrics wrote no file
    metrics = result.metrics
    assert set(METRICS) - {"hull_skipped"} <= set(metrics)
    assert metrics["hull"] == "user-supplied entries (2)" and metrics["hull_entries"] == 2
    assert metrics["sun_rate"] is None and metrics["novel_rate"] is None  # no training set: unknown
    nacl_row, kcl_row = result.rows
    assert nacl_row["e_hull"] == pytest.approx(nacl_row["corrected_energy_per_atom"] + 1.55, abs=1e-9)
    assert kcl_row["e_hull"] is None and "K" in kcl_row["hull_error"]  # K is not in the hull
    assert metrics["metastable_rate"] == (nacl_row["e_hull"] < 0.1) / 2
    assert [name for name, _ in result.relaxed] == ["nacl", "kcl"]

    out = write_report(result, tmp_path / "report")
    assert json.loads((out / "metrics.json").read_text()) == result.metrics
    assert sorted(p.name for p in out.iterdir()) == [
        "crystal_systems.png", "e_hull.png", "lattice.png", "metrics.json", "nary_density.png", "relaxed.cif",
        "report.md", "samples.csv",
    ]  # fmt: skip
    assert nacl_row["space_group"] == 221 and metrics["relaxed_n_symmetry_sp0.1"] == 2
    assert "## Symmetry" in (out / "report.md").read_text()
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert [r["id"] for r in rows] == ["nacl", "kcl"]
    assert float(rows[0]["e_hull"]) == pytest.approx(nacl_row["e_hull"]) and rows[1]["e_hull"] == ""
    cif = (out / "relaxed.cif").read_text()
    assert cif.count("data_") == 2 and "data_nacl\n" in cif and "data_kcl\n" in cif
    assert "user-supplied entries (2)" in (out / "report.md").read_text()


def test_write_report_without_relaxation(tmp_path):
    from hf_crystal.evaluation.metrics import compute_metrics
    from hf_crystal.evaluation.report import write_report

    result = compute_metrics([_nacl(), _kcl()], [_nacl(5.5)], [_nacl()], relax=False, progress=False)
    assert result.relaxed is None and result.e_hulls == []
    assert result.rows[1]["novel"] is True and result.rows[0]["e_hull"] is None
    out = write_report(result, tmp_path / "out")
    assert not (out / "relaxed.cif").exists() and not (out / "e_hull.png").exists()
    assert json.loads((out / "metrics.json").read_text()) == result.metrics
    assert "e_hull.png" not in (out / "report.md").read_text()


def test_importing_the_command_loads_nothing_heavy():
    heavy = ["torch", "scipy", "smact", "matminer", "chgnet", "pandas", "hf_crystal.evaluation.relax"]
    code = (
        "import sys, hf_crystal.commands.evaluate, hf_crystal.evaluation, hf_crystal.evaluation.defaults\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_evaluate_puts_the_results_on_a_card(files, tmp_path):
    from huggingface_hub import ModelCard

    from hf_crystal.testing import save_tiny_llama

    model = save_tiny_llama(tmp_path / "model")
    _, metrics = _run(files, tmp_path, "--no-relax", "--card", str(model))
    card = ModelCard.load(model / "README.md")
    on_card = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert (
        on_card["struct_valid"] == metrics["struct_valid"] and on_card["novel_rate"] == metrics["novel_rate"]
    )
    assert "3 samples" in card.text and "hf-crystal evaluate" in card.text


def test_empty_sample_file_is_a_one_line_error(files, tmp_path, capsys):
    _, reference, _ = files
    empty = tmp_path / "EMPTY.cif"
    empty.write_text("")
    assert main(["evaluate", str(empty), "--reference", str(reference), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"hf-crystal: error: {empty} holds no structures"


def test_limits_apply_to_samples_reference_and_train_separately(files, tmp_path, monkeypatch):
    import hf_crystal.evaluation.metrics as metrics

    seen = {}

    def fake(samples, reference, train, **kwargs):
        seen.update(samples=len(samples), reference=len(reference), train=len(train))
        raise KeyboardInterrupt  # stop before anything is computed or written

    monkeypatch.setattr(metrics, "compute_metrics", fake)
    samples, _, train = files
    reference = tmp_path / "refs"
    reference.mkdir()
    for i, s in enumerate([_nacl(5.5), _nacl(5.6), _kcl()]):
        CifWriter(s).write_file(reference / f"r{i}.cif")
    argv = ["evaluate", str(samples), "--reference", str(reference), "--train", str(train), "--no-relax"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--limit-reference", "2"]) == 130
    assert seen == {"samples": 3, "reference": 2, "train": 1}
    assert main([*argv, "--out", str(tmp_path / "o"), "--limit-samples", "1"]) == 130
    assert seen == {"samples": 1, "reference": 3, "train": 1}
    with pytest.raises(SystemExit):  # argparse: exit 2 with its usage line
        main([*argv, "--out", str(tmp_path / "o"), "--limit-train", "0"])
