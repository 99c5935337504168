"""benchmarks/side_by_side.py: the row grammar, resuming finished parts, and the counts it reports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from factories import rocksalt, sodium_nitride
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the tasks)
from hf_crystal.embedded import DEFAULT_MODEL
from hf_crystal.structure_io import cif_block
from hf_crystal.testing import tiny_llama
from hf_crystal.tokenization import build_crystal_tokenizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def side():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports bench_generation beside it
    try:
        spec = importlib.util.spec_from_file_location("side_by_side", BENCHMARKS / "side_by_side.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["side_by_side"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("side_by_side", None)


def _own_refiner(model):
    return "own-refiner" if model == DEFAULT_MODEL else None


def test_row_specs(side):
    rows = side.parse_rows(
        ["default", "default+none", "w=models/wyckoff+hf-crystal/refiner", "w0=models/wyckoff", "pyxtal"],
        _own_refiner,
    )
    assert [(r.name, r.model, r.refiner) for r in rows] == [
        ("default", DEFAULT_MODEL, "own-refiner"),  # without "+": the model's own refiner
        ("default+none", DEFAULT_MODEL, None),
        ("w", "models/wyckoff", "hf-crystal/refiner"),
        ("w0", "models/wyckoff", None),  # a model without a refiner of its own: as written
        ("pyxtal", None, None),
    ]
    assert not rows[-1].generated
    # Rows as written score the LLM samples of their model's refined row, when there is one.
    assert side.conditions_source(rows[1], rows) == (rows[0], True)
    assert side.conditions_source(rows[0], rows) == (rows[0], False)
    assert side.conditions_source(rows[3], rows) == (rows[2], True)
    assert side.conditions_source(rows[3], rows[3:]) == (rows[3], False)
    for bad, message in (
        ("models/wyckoff+none", "names a folder"),  # a path is no folder name: NAME= is needed
        ("w=models/wyckoff+", "expected"),
        ("=default", "expected"),
        ("pyxtal+none", "no refiner"),
    ):
        with pytest.raises(ValueError, match=message):
            side.parse_row(bad, _own_refiner)
    with pytest.raises(ValueError, match="given twice"):
        side.parse_rows(["a=default", "a=default+none"], _own_refiner)


def test_parts_are_skipped_once_done_and_refused_with_other_settings(side, tmp_path):
    parts, calls = side.Parts(tmp_path), []

    def compute():
        calls.append(1)
        return {"value": 3}

    assert parts.run("row.benchmark", {"argv": ["--num", "8"]}, compute)["value"] == 3
    again = side.Parts(tmp_path)  # a rerun of the script
    assert again.run("row.benchmark", {"argv": ["--num", "8"]}, compute)["value"] == 3
    assert len(calls) == 1 and again.seconds["row.benchmark"] >= 0
    with pytest.raises(side.PartError, match="other settings \\(argv\\)"):
        again.run("row.benchmark", {"argv": ["--num", "16"]}, compute)


def test_condition_rates_count_unreadable_samples_as_misses(side, tmp_path):
    salt = rocksalt()  # Fm-3m (225), NaCl
    lines = [
        {"material_id": "sample-0", "cif": cif_block(salt, "sample-0"), "conditions": {"formula": "NaCl", "spacegroup": 225}},
        {"material_id": "sample-1", "cif": cif_block(salt, "sample-1"), "conditions": {"formula": "NaCl", "spacegroup": 221}},
        {"material_id": "sample-2", "text": "not a crystal", "conditions": {"formula": "KCl", "spacegroup": 225}},
    ]  # fmt: skip
    path = tmp_path / "conditioned.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "conditions": json.dumps(r["conditions"])}) + "\n" for r in lines)
    )
    rates = side.condition_rates(path)
    assert rates["n"] == 3
    assert rates["sg_hit_count"] == 1 and rates["formula_match_count"] == 2
    assert rates["both"] == pytest.approx(1 / 3)
    low, high = rates["sg_hit_ci95"]
    assert low < 1 / 3 < high


def test_infill_top_k_on_a_forced_model(side):
    """A tiny model whose every next-token distribution is fixed: Na first, Cl second, N last."""
    tokenizer = build_crystal_tokenizer()
    model = tiny_llama(tokenizer, seed=0)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for symbol, logit in (("Na", 12.0), ("Cl", 8.0), ("N", -8.0)):
            (token,) = tokenizer(symbol, add_special_tokens=False)["input_ids"]
            head.bias[token] = logit
    model.lm_head = head
    infill = pipeline("crystal-infill", model=model, tokenizer=tokenizer)
    tasks = [(rocksalt(), "Na"), (rocksalt(), "Cl"), (sodium_nitride(), "N"), (sodium_nitride(), "Na")]
    result = side.infill_recovery(infill, tasks, k=5)
    assert result["ranks"] == [0, 1, None, 0]
    assert (result["n"], result["top1"], result["top5"]) == (4, 0.5, 0.75)


def test_pyxtal_structures_not_built_stay_as_unreadable_samples(side, tmp_path, monkeypatch):
    from hf_crystal.structure_io import read_structures

    like = tmp_path / "like.csv"
    salt, nitride = rocksalt(), sodium_nitride()
    rows = [("mp-1", salt), ("mp-2", nitride), ("mp-3", salt)]
    like.write_text("material_id,cif\n" + "".join(f'{i},"{cif_block(s, i)}"\n' for i, s in rows))

    def baseline(argv, log):  # what `hf-crystal baseline random` writes when pyxtal builds mp-3 only
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(cif_block(salt.copy(), "mp-3"))

    monkeypatch.setattr(side, "_cli", baseline)
    assert side.pyxtal_samples(like, tmp_path, seed=0) == {"n": 3, "built": 1}
    ids, structures, skipped = read_structures(tmp_path / "samples.jsonl")
    assert ids == ["mp-3"] and [i for i, _ in skipped] == ["mp-1", "mp-2"]  # counted, in the file's order
