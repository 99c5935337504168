"""`hf-crystal generate --conditions-file`: a conditional benchmark in one command."""

import csv
import json

import pytest

from hf_crystal.commands import main
from hf_crystal.commands.generate import _batches
from hf_crystal.testing import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("model"))


def test_conditions_file_round_trip(tiny_model, tmp_path, capsys):
    sets = tmp_path / "conditions.jsonl"
    sets.write_text(
        '{"formula": "NaCl", "count": 3}\n\n{"formula": "KBr", "spacegroup": 225, "formula_units": 2}\n'
    )
    out = tmp_path / "samples.jsonl"
    argv = ["generate", "--model", str(tiny_model), "--conditions-file", str(sets), "--num", "2"]
    assert (
        main([*argv, "--batch-size", "2", "--seed", "0", "--formula-units", "cell", "--out", str(out)]) == 0
    )
    assert "generated 5" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    asked = [json.loads(r["conditions"]) for r in rows]
    assert (
        asked
        == [{"formula": "Na1Cl1", "formula_units": "cell"}] * 3
        + [
            {"formula": "K2Br2", "spacegroup": 225, "formula_units": 2}  # a line's own formula_units wins
        ]
        * 2
    )  # as prompted
    assert [r["material_id"] for r in rows] == [f"sample-{i:06d}" for i in range(5)]


def test_formula_units_flag_reaches_the_samples(tiny_model, tmp_path, capsys):
    out = tmp_path / "samples.csv"
    argv = ["generate", "--model", str(tiny_model), "--formula", "Li2O", "--num", "6", "--seed", "0"]
    assert main([*argv, "--max-sites", "9", "--out", str(out)]) == 0  # "any" by default
    asked = [json.loads(line["conditions"]) for line in csv.DictReader(out.open())]
    assert {a["formula_units"] for a in asked} == {"any"}
    assert {a["formula"] for a in asked} <= {"Li2O1", "Li4O2", "Li6O3"}
    record = json.loads((tmp_path / "samples.generation.json").read_text())
    assert record["formula_units"] == "any" and record["max_sites"] == 9
    assert main([*argv, "--formula-units", "3", "--out", str(tmp_path / "three.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "three.csv").open()))
    assert {r["conditions"] for r in rows} == {'{"formula": "Li6O3", "formula_units": 3}'}
    assert main([*argv, "--max-sites", "2", "--out", str(tmp_path / "none.csv")]) == 2
    assert "more than max_sites=2" in capsys.readouterr().err
    assert not (tmp_path / "none.csv").exists()  # refused before the model loads


def test_out_in_a_folder_that_does_not_exist_yet(tiny_model, tmp_path):
    out = tmp_path / "outputs" / "quickstart" / "samples.cif"  # the README's quickstart on a fresh clone
    assert main(["generate", "--model", str(tiny_model), "--num", "2", "--seed", "0", "--out", str(out)]) == 0
    assert out.read_text().count("data_") == 2
    assert json.loads((out.parent / "samples.generation.json").read_text())["seed"] == 0


def test_batches_cover_every_sample_once_and_resume_mid_set():
    plan = [({"formula": "NaCl"}, 5), ({"spacegroup": 225}, 3)]
    full = list(_batches(plan, 0, 2))
    assert [(i, len(sets) * n) for i, sets, n in full] == [(0, 2), (2, 2), (4, 1), (5, 2), (7, 1)]
    assert full[-1][1] == [{"spacegroup": 225}]
    assert [(i, n) for i, _, n in _batches(plan, 6, 2)] == [(6, 2)]


def test_small_sets_share_batches():
    """Sets of one sample (a conditional benchmark) run batch_size at a time; a change of count or a full batch
    starts a new one; resuming mid-set draws the rest of that set alone."""
    plan = [({"formula": f}, 1) for f in ("NaCl", "KBr", "LiF")] + [({"formula": "MgO"}, 2), ({}, 5)]
    full = list(_batches(plan, 0, 2))
    assert [(i, [c.get("formula") for c in sets], n) for i, sets, n in full] == [
        (0, ["NaCl", "KBr"], 1),
        (2, ["LiF"], 1),
        (3, ["MgO"], 2),
        (5, [None], 2),
        (7, [None], 2),
        (9, [None], 1),
    ]
    assert [(i, n) for i, _, n in _batches(plan, 4, 2)] == [(4, 1), (5, 2), (7, 2), (9, 1)]


def test_conditions_file_of_single_samples_keeps_the_order(tiny_model, tmp_path, capsys):
    sets = tmp_path / "conditions.jsonl"
    formulas = ["NaCl", "KBr", "LiF", "MgO", "CsI"]
    sets.write_text("".join(f'{{"formula": "{f}", "count": 1}}\n' for f in formulas))
    out = tmp_path / "samples.jsonl"
    argv = ["generate", "--model", str(tiny_model), "--conditions-file", str(sets), "--formula-units", "cell"]
    assert main([*argv, "--batch-size", "2", "--seed", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.loads(r["conditions"])["formula"] for r in rows] == [
        "Na1Cl1",
        "K1Br1",
        "Li1F1",
        "Mg1O1",
        "Cs1I1",
    ]
    assert [r["material_id"] for r in rows] == [f"sample-{i:06d}" for i in range(5)]
    assert "generated 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, out, message",
    [
        ('{"formula": "NaCl"}\n', "s.cif", "must be .csv or .jsonl"),
        ('{"colour": "red"}\n', "s.jsonl", "line 1: unknown conditions"),
        ('{"formula": "NaCl", "count": 0}\n', "s.jsonl", "positive integer"),
        ("not json\n", "s.jsonl", "line 1"),
        ("\n", "s.jsonl", "holds no condition sets"),
    ],
)
def test_conditions_file_mistakes(tiny_model, tmp_path, capsys, content, out, message):
    sets = tmp_path / "c.jsonl"
    sets.write_text(content)
    argv = [
        "generate",
        "--model",
        str(tiny_model),
        "--conditions-file",
        str(sets),
        "--out",
        str(tmp_path / out),
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_reads_conditions_provenance_and_ipt(tiny_model, tmp_path, capsys):
    sets = tmp_path / "conditions.jsonl"
    sets.write_text('{"formula": "NaCl", "count": 4}\n')
    samples = tmp_path / "samples.jsonl"
    argv = ["generate", "--model", str(tiny_model), "--conditions-file", str(sets), "--temperature", "0.7"]
    assert main([*argv, "--seed", "3", "--out", str(samples)]) == 0
    record = json.loads((tmp_path / "samples.generation.json").read_text())
    assert record["seed"] == 3 and record["sampling"] == {"temperature": 0.7} and record["constrained"]
    assert record["condition_sets"] == [{"formula": "NaCl", "count": 4}] and record["formula_units"] == "any"
    out = tmp_path / "report"
    reference = tmp_path / "reference.cif"
    from factories import rocksalt

    reference.write_text(rocksalt().to(fmt="cif"))
    argv = ["evaluate", str(samples), "--reference", str(reference), "--no-relax", "--out", str(out)]
    assert main([*argv, "--model", str(tiny_model), "--ipt-n", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cond_formula_n"] == 4  # parsed or not, every sample asked
    assert metrics["cond_formula_reduced"] == 1.0  # constrained decoding writes exactly the cell it chose
    assert metrics["cond_formula_cell"] is None and metrics["cond_formula_cell_n"] == 0  # any Z: n/a
    assert metrics["provenance"]["model"] == str(tiny_model)
    assert metrics["ipt_n"] == 1 and metrics["ipt_mean"] >= 0 and metrics["perplexity_mean"] > 1
    report = (out / "report.md").read_text()
    assert "## Condition satisfaction" in report and (out / "conditions.png").exists()
