"""Structure readers and the dataset builder: every source format, bad rows counted, Hub round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset
from factories import rocksalt, structures
from huggingface_hub import DatasetCard
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from hf_crystal.commands import main
from hf_crystal.data import build_dataset, load_crystal_dataset, save_dataset
from hf_crystal.structure_io import DataFormatError, read_structures
from hf_crystal.text import decode

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOOD = structures()
DISORDERED = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])


@pytest.fixture
def cdvae_csv(tmp_path) -> Path:
    """A CDVAE-format CSV: unnamed index, material_id, cif, properties; 3 of its rows are unusable."""
    rows = [
        {
            "material_id": f"ok-{i}",
            "cif": s.to(fmt="cif"),
            "band_gap": float(i),
            "formula": s.composition.reduced_formula,
        }
        for i, s in enumerate(GOOD.values())
    ]
    rows += [
        {"material_id": "garbage", "cif": "data_x\nthis is not a cif", "band_gap": 0.0, "formula": "?"},
        {"material_id": "empty", "cif": None, "band_gap": 0.0, "formula": "?"},
        {"material_id": "disordered", "cif": DISORDERED.to(fmt="cif"), "band_gap": 0.0, "formula": "FeNi"},
    ]
    path = tmp_path / "val.csv"
    pd.DataFrame(rows).to_csv(path)  # writes the unnamed index column, as CDVAE's files have
    return path


def test_build_from_csv_counts_what_it_skips(cdvae_csv):
    dataset, report = build_dataset(cdvae_csv, split_fractions=(0.6, 0.2, 0.2), seed=0)
    assert sum(report.rows.values()) == len(GOOD) and sum(report.skipped.values()) == 3
    assert {m for m, _ in report.skipped_examples} == {"garbage", "empty", "disordered"}
    assert any("partial occupancies" in reason for reason in report.skipped)
    assert "skipped: 3" in report.summary()
    assert report.renamed_columns == {"formula": "source_formula"}
    rows = [row for split in dataset.values() for row in split]
    assert {r["material_id"] for r in rows} == {f"ok-{i}" for i in range(len(GOOD))}
    by_id = {r["material_id"]: r for r in rows}
    for i, structure in enumerate(GOOD.values()):
        row = by_id[f"ok-{i}"]
        assert decode(row["text"]).composition == structure.composition
        assert row["n_atoms"] == len(structure) and row["band_gap"] == float(i)
        assert row["elements"] == sorted(el.symbol for el in structure.composition.elements)
        assert row["formula"] == structure.composition.reduced_formula
    assert by_id["ok-2"]["spacegroup"] == 225 and by_id["ok-2"]["full_formula"] == "Na4Cl4"  # rocksalt
    assert "Unnamed: 0" not in dataset["train"].column_names


def test_split_is_seeded_and_complete(cdvae_csv):
    a, _ = build_dataset(cdvae_csv, seed=1)
    b, _ = build_dataset(cdvae_csv, seed=1)
    c, _ = build_dataset(cdvae_csv, seed=2)
    ids = lambda d: {k: list(v["material_id"]) for k, v in d.items()}  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert sorted(sum(ids(a).values(), [])) == sorted(f"ok-{i}" for i in range(len(GOOD)))


def test_build_from_split_files_and_cif_folder(tmp_path, cdvae_csv):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, structure in enumerate(list(GOOD.values())[:3]):
        structure.to(filename=str(folder / f"s{i}.cif"))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    dataset, report = build_dataset({"train": cdvae_csv, "test": folder})
    assert report.rows == {"train": len(GOOD), "test": 3}
    assert sum(report.skipped.values()) == 4  # 3 bad CSV rows + the broken CIF
    assert sorted(dataset["test"]["material_id"]) == ["s0", "s1", "s2"]
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset({"training": cdvae_csv})


def test_saved_folder_loads_with_load_dataset(tmp_path, cdvae_csv):
    dataset, _ = build_dataset(cdvae_csv, seed=0)
    out = save_dataset(dataset, tmp_path / "ds", card="---\nlicense: mit\n---\n# card\n")
    loaded = load_dataset(str(out))
    assert set(loaded) == set(dataset)
    for split in dataset:
        assert loaded[split].to_list() == dataset[split].to_list()
    assert load_crystal_dataset(out, split="train").to_list() == dataset["train"].to_list()


def test_readers_of_every_sample_format(tmp_path):
    good = [rocksalt(), GOOD["ZnO (hexagonal)"]]
    multi = tmp_path / "samples.cif"
    multi.write_text("".join(s.to(fmt="cif") for s in good) + "data_bad\n_cell_length_a 1\n")
    ids, read, skipped = read_structures(multi)
    assert len(read) == 2 and len(skipped) == 1
    assert [s.composition for s in read] == [s.composition for s in good]

    from ase.io import write

    xyz = tmp_path / "samples.extxyz"
    write(xyz, [AseAtomsAdaptor.get_atoms(s) for s in good], format="extxyz")
    ids, read, skipped = read_structures(xyz)
    assert [s.composition for s in read] == [s.composition for s in good] and not skipped

    jsonl = tmp_path / "samples.jsonl"
    lines = [
        json.dumps({"id": "a", "cif": good[0].to(fmt="cif")}),
        json.dumps({"id": "b", "text": "4 4 4\n90 90 90\nNa\n0 0 0"}),
        json.dumps({"id": "c", "text": "4 4 4\n90 90 90\nLn\n0 0 0"}),
        "not json",
        json.dumps({"id": "e"}),
    ]
    jsonl.write_text("\n".join(lines) + "\n")
    ids, read, skipped = read_structures(jsonl)
    assert ids == ["a", "b"]
    assert [m for m, _ in skipped] == ["c", "samples-3", "e"]
    assert "unknown element" in skipped[0][1]


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "missing.csv")
    (tmp_path / "x.dat").write_text("")
    with pytest.raises(DataFormatError, match="cannot read structures"):
        read_structures(tmp_path / "x.dat")
    with pytest.raises(DataFormatError, match="no .cif files"):
        read_structures(tmp_path)
    (tmp_path / "nocif.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataFormatError, match="'cif' column"):
        read_structures(tmp_path / "nocif.csv")


def test_cli_build_and_push_to_hub(tmp_path, cdvae_csv, hub_server, capsys):
    repo_id = hub_server.repo_id("crystals")
    out = tmp_path / "built"
    assert (
        main(
            [
                "dataset",
                "build",
                str(cdvae_csv),
                "--out",
                str(out),
                "--push-to-hub",
                repo_id,
                "--license",
                "mit",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped: 3" in printed and "pushed:" in printed
    local = load_crystal_dataset(out)
    remote = load_crystal_dataset(repo_id)
    for split in local:
        assert remote[split].to_list() == local[split].to_list()
    card = DatasetCard.load(repo_id, repo_type="dataset")
    assert "crystal-generation" in card.data.tags and card.data.license == "mit"
    assert "could not be used: **3**" in card.text and f'load_dataset("{repo_id}")' in card.text


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data folder {SHARED_DATA} is absent")
def test_build_mp20_excerpt(tmp_path):
    dataset, report = build_dataset(SHARED_DATA / "mp_20" / "train.csv")
    assert sum(report.rows.values()) == 243 and not report.skipped
    # The builder's spglib number agrees with MP's own for nearly every structure.
    rows = [r for split in dataset.values() for r in split]
    agree = sum(r["spacegroup"] == r["spacegroup.number"] for r in rows) / len(rows)
    assert agree > 0.9


def test_split_sources_with_different_columns_share_one_schema(tmp_path, capsys):
    """Train has band_gap + e_above_hull, validation band_gap + an integer column: the saved folder loads,
    each property missing from a source is null (never zero) and the nulls are counted in report and card."""
    good = list(GOOD.values())
    train_rows = [
        {"material_id": f"t{i}", "cif": s.to(fmt="cif"), "band_gap": 1.5, "e_above_hull": 0.1 * i}
        for i, s in enumerate(good[:5])
    ]
    val_rows = [
        {
            "material_id": f"v{i}",
            "cif": s.to(fmt="cif"),
            "band_gap": None if i == 0 else 2.0,
            "n_sites": len(s),
        }
        for i, s in enumerate(good[5:8])
    ]
    train_csv, val_csv = tmp_path / "train.csv", tmp_path / "val.csv"
    pd.DataFrame(train_rows).to_csv(train_csv)
    pd.DataFrame(val_rows).to_csv(val_csv)
    out = tmp_path / "ds"
    assert (
        main(["dataset", "build", "--train", str(train_csv), "--validation", str(val_csv), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "saved to" in printed and "e_above_hull: train=0, validation=3 (not in source)" in printed

    loaded = load_crystal_dataset(out)  # by folder
    assert {k: len(v) for k, v in loaded.items()} == {"train": 5, "validation": 3}
    assert loaded["train"].features == loaded["validation"].features
    assert loaded["train"].features["e_above_hull"].dtype == "float64"
    assert loaded["train"].features["n_sites"].dtype == "int64"
    assert loaded["validation"]["e_above_hull"] == [None] * 3
    assert loaded["train"]["n_sites"] == [None] * 5
    assert loaded["validation"]["band_gap"] == [None, 2.0, 2.0]
    assert loaded["validation"]["n_sites"] == [len(s) for s in good[5:8]]

    dataset, report = build_dataset({"train": train_csv, "validation": val_csv})
    assert report.absent_columns == {"train": ["n_sites"], "validation": ["e_above_hull"]}
    assert report.null_counts["validation"]["band_gap"] == 1 and report.null_counts["train"]["band_gap"] == 0
    assert report.null_columns() == {
        "e_above_hull": {"train": 0, "validation": 3},
        "n_sites": {"train": 5, "validation": 0},
        "band_gap": {"train": 0, "validation": 1},
    }
    card = (out / "README.md").read_text()
    assert "| column | train | validation |" in card
    assert "| `e_above_hull` | 0 | 3 (not in source) |" in card
    assert "| `n_sites` | 5 (not in source) | 0 |" in card
    assert "| `band_gap` | 0 | 1 |" in card


def test_unify_features_casts_nulls_and_mixed_numbers():
    from datasets import Dataset, DatasetDict

    from hf_crystal.data import unify_features

    mixed = DatasetDict(
        {
            "train": Dataset.from_dict({"a": [1, 2], "b": [None, None]}),
            "test": Dataset.from_dict({"a": [0.5], "b": ["x"], "c": [True]}),
        }
    )
    out = unify_features(mixed)
    assert out["train"].features == out["test"].features
    assert out["train"].to_list() == [{"a": 1.0, "b": None, "c": None}, {"a": 2.0, "b": None, "c": None}]
    bad = DatasetDict({"train": Dataset.from_dict({"a": [[1]]}), "test": Dataset.from_dict({"a": [1]})})
    with pytest.raises(DataFormatError, match="column 'a' has incompatible types"):
        unify_features(bad)


def test_build_fails_clearly_when_the_folder_does_not_load_back(tmp_path, cdvae_csv, monkeypatch, capsys):
    import hf_crystal.data

    def broken(*args, **kwargs):
        raise RuntimeError("column names don't match")

    monkeypatch.setattr(hf_crystal.data, "load_crystal_dataset", broken)
    assert main(["dataset", "build", str(cdvae_csv), "--out", str(tmp_path / "ds")]) == 2
    captured = capsys.readouterr()
    assert "cannot read it back: RuntimeError: column names don't match" in captured.err
    assert "saved to" not in captured.out


@pytest.mark.parametrize("suffix", [".cif", ".extxyz", ".csv", ".jsonl"])
def test_samples_with_overlapping_atoms_read_back_exactly(tmp_path, suffix):
    """CIF readers merge coinciding sites; a generated sample may have two atoms on one spot and must survive."""
    from hf_crystal.structure_io import SampleWriter
    from hf_crystal.text import encode

    overlapping = Structure(
        Lattice.from_parameters(4.1, 5.2, 6.3, 80, 95, 100),
        ["Na", "Cl", "Na", "Na"],
        [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]],
    )
    sample = {"text": encode(overlapping), "structure": overlapping, "valid": False, "error": None}
    SampleWriter(tmp_path / f"samples{suffix}").write([sample, sample], start=0)
    ids, structures, skipped = read_structures(tmp_path / f"samples{suffix}")
    assert ids == ["sample-000000", "sample-000001"] and not skipped
    for structure in structures:
        assert [s.specie.symbol for s in structure] == ["Na", "Cl", "Na", "Na"]
        assert np.allclose(structure.frac_coords, overlapping.frac_coords, atol=1e-6)
        assert np.allclose(structure.lattice.matrix, overlapping.lattice.matrix, atol=1e-6)


def test_symmetrized_cif_still_expands_its_sites(tmp_path):
    from pymatgen.io.cif import CifWriter

    (tmp_path / "nacl.cif").write_text(str(CifWriter(rocksalt(), symprec=0.1)))  # Fm-3m, 2 unique sites
    _, (structure,), _ = read_structures(tmp_path / "nacl.cif")
    assert len(structure) == 8 and structure.composition == rocksalt().composition
