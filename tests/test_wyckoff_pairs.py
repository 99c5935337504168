"""Refiner pairs of a Wyckoff-text LLM: x1 unrounded in the text's setting, atoms paired within Wyckoff orbits over
x0's equivalent origins, the pair's interpolant kept in the group, and training with the projection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from factories import rocksalt
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from training_helpers import crystal_dataset
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the tasks)
from hf_crystal.refiner import CrystalRefinerPipeline, interpolate
from hf_crystal.refiner.batching import CrystalBatch
from hf_crystal.symmetry import SymmetryProjector, operations_in_cell, space_group
from hf_crystal.testing import save_tiny_llama
from hf_crystal.text import decode, encode
from hf_crystal.text_wyckoff import parse, standard_form
from hf_crystal.training import pairs as pairs_module
from hf_crystal.training.pairs import PairSettings, build_pairs
from hf_crystal.training.refiner import _symmetric_target, main
from hf_crystal.training.wyckoff_pairs import orbit_classes, pair_operations, pair_orbits, wyckoff_pair

TINY = ["--hidden_dim", "16", "--edge_dim", "8", "--num_layers", "1", "--time_dim", "8", "--num_freqs", "4"]


def _wurtzite() -> Structure:
    """ZnO, P6_3mc: a polar group (any shift along c keeps it)."""
    lattice = Lattice.hexagonal(3.25, 5.21)
    return Structure.from_spacegroup(
        "P6_3mc", lattice, ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
    )


def _perovskite() -> Structure:
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


def _monoclinic() -> Structure:
    """A C2/m crystal with free coordinates on 4i positions."""
    lattice = Lattice.monoclinic(5.9, 3.6, 6.4, 104.0)
    return Structure.from_spacegroup("C2/m", lattice, ["Li", "O"], [[0.12, 0, 0.31], [0.37, 0, 0.84]])


CRYSTALS = {"rock salt": rocksalt, "perovskite": _perovskite, "wurtzite": _wurtzite, "C2/m": _monoclinic}


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_standard_form_is_the_round_trip_without_rounding(name):
    structure = CRYSTALS[name]()
    exact = standard_form(structure).to_structure()
    rounded = decode(encode(structure, format="wyckoff"), format="wyckoff")
    assert exact.species == rounded.species  # same setting, origin and atom order
    assert np.abs((exact.frac_coords - rounded.frac_coords + 0.5) % 1 - 0.5).max() < 0.02
    assert StructureMatcher(stol=0.01, primitive_cell=False).fit(exact, structure.get_primitive_structure())


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_orbit_pairing_undoes_the_origin_and_representatives_of_a_text(name):
    """x0 = another text of x1 itself (random origin, polar shift, representatives, line order): the pairing finds
    x1's own atoms, up to the text's rounding."""
    structure = CRYSTALS[name]()
    x1 = standard_form(structure)
    for seed in range(4):
        x0 = parse(encode(structure, format="wyckoff", translate="random", permute=True, seed=seed))
        pairing = pair_orbits(x0, x1)
        assert pairing is not None
        paired, target = pairing.x0.to_structure(), x1.to_structure()
        assert paired.species == target.species
        assert np.abs((paired.frac_coords - target.frac_coords + 0.5) % 1 - 0.5).max() < 0.02


def test_an_origin_shift_that_swaps_labels_is_undone():
    """CsCl written with the other origin of Pm-3m: Cs on 1b, Cl on 1a. The labels differ as written, not after
    the normalizer's shift by (1/2, 1/2, 1/2)."""
    x1 = parse("221\n4.1\nCs 1a\nCl 1b")
    x0 = parse("221\n4.3\nCs 1b\nCl 1a")
    assert orbit_classes(x0) != orbit_classes(x1)
    pairing = pair_orbits(x0, x1)
    assert pairing is not None and pairing.origin == 1 and pairing.cost == pytest.approx(0)
    # Different orbits under every origin: SrTiO3 with O on 3d instead of 3c is another crystal.
    assert pair_orbits(parse("221\n3.9\nSr 1a\nTi 1b\nO 3d"), parse("221\n3.9\nSr 1a\nTi 1b\nO 3c")) is None


def test_paired_atoms_move_together_under_every_operation():
    """A C2/m x0 with other free coordinates and lattice: the group's operations permute x0's atoms as x1's, so
    the interpolant between them, and the velocity target, keep the group."""
    structure = _monoclinic()
    x1 = standard_form(structure)
    lines = encode(structure, format="wyckoff").splitlines()
    lines[1] = "6.2 3.4 6.1 99"
    lines[2:] = [
        " ".join([*line.split()[:2], "0.05", "0.45"]) if i else line for i, line in enumerate(lines[2:])
    ]
    row = wyckoff_pair("m", x1, "\n".join(lines), structure)
    assert row["matched"] == "orbits" and row["x1_roundtrip"] and row["target_asymmetry"] < 1e-9
    assert row["cost_assigned"] < row["cost_xyz"]
    x0, target = (Structure.from_str(row[k], fmt="json") for k in ("x0", "x1"))
    operations = pair_operations(target, row["spacegroup"], row["cell"])
    assert len(operations.rotations) == 4  # C2/m in a primitive cell
    on_x0 = operations_in_cell(x0, operations.rotations, operations.translations, 12)
    np.testing.assert_array_equal(on_x0.atom_map, operations.atom_map)
    batch0, batch1 = (
        CrystalBatch.from_structures([x0], niggli=False),
        CrystalBatch.from_structures([target], False),
    )
    project = SymmetryProjector([operations], [len(target)])
    flow = interpolate(
        (batch0.frac_coords.double(), batch0.lattice.double()),
        (batch1.frac_coords.double(), batch1.lattice.double()),
        torch.tensor([0.4], dtype=torch.float64),
        batch1.crystal_index,
    )
    projected = _symmetric_target(flow, project)
    for name in ("frac_coords", "lattice", "coord_velocity"):
        assert torch.allclose(getattr(projected, name), getattr(flow, name), atol=1e-9), name


def test_pairs_whose_orbits_differ_fall_back_to_elements():
    structure = _perovskite()
    row = wyckoff_pair("p", standard_form(structure), "221\n3.9\nSr 1a\nTi 1b\nO 3d", structure)
    assert row["matched"] == "elements" and row["target_asymmetry"] is None
    x0, x1 = (Structure.from_str(row[k], fmt="json") for k in ("x0", "x1"))
    assert x0.species == x1.species


@pytest.fixture(scope="module")
def wyckoff_llm(tmp_path_factory):
    """A random tiny model whose config says it writes Wyckoff text."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("random") / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "crystal_format": "wyckoff"}))
    return folder


def test_wyckoff_pairs_are_counted_cached_and_resume(wyckoff_llm, tmp_path, monkeypatch):
    pipe = pipeline("crystal-generation", model=str(wyckoff_llm))
    crystals = [rocksalt(), _perovskite(), Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0] * 3, [0.5] * 3])]
    ids = ["nacl", "srtio3", "cscl"]
    monkeypatch.setattr(pairs_module, "SHARD_SIZE", 2)
    settings = PairSettings(batch_size=4, attempts=2)
    first = build_pairs(pipe, ids, crystals, tmp_path, settings, model_name=str(wyckoff_llm))
    assert len(first) == 3 and all(first["x1_roundtrip"]) and first["error"] == [None] * 3
    # Constrained decoding writes each x1's formula and group; rock salt and CsCl have one way of doing it.
    assert [parse(text).spacegroup for text in first["llm_text"]] == [225, 221, 221]
    assert first["matched"][0] == first["matched"][2] == "orbits" and first["matched"][1] in (
        "orbits",
        "elements",
    )
    for row in first:
        x0, x1 = (Structure.from_str(row[k], fmt="json") for k in ("x0", "x1"))
        assert x0.species == x1.species  # paired site by site
        assert row["attempt"] == 0 or (row["attempt"] == 1 and row["matched"] == "orbits")  # the first usable
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (folder / "pairs-00001.jsonl").unlink()  # as if interrupted during the second shard
    again = build_pairs(pipe, ids, crystals, tmp_path, settings, model_name=str(wyckoff_llm))
    assert again["x0"] == first["x0"] and again["llm_text"] == first["llm_text"]


def test_training_with_the_projection_keeps_a_symmetric_x0_symmetric(wyckoff_llm, tmp_path):
    data = crystal_dataset(tmp_path / "data")
    out = tmp_path / "refiner"
    argv = ["--dataset", str(data), "--output_dir", str(out), "--llm", str(wyckoff_llm), "--max_steps", "6"]
    argv += [
        "--batch_size",
        "4",
        "--logging_steps",
        "2",
        "--save_steps",
        "4",
        "--warmup_steps",
        "1",
        "--seed",
        "0",
    ]
    argv += [
        "--pairs_cache_dir",
        str(tmp_path / "pairs"),
        "--base_noise_std",
        "0.02",
        "--num_threads",
        "1",
        "--limit",
        "5",
        *TINY,
    ]
    main(argv)
    card = (out / "README.md").read_text()
    assert "pairs with x1's Wyckoff orbits (usable)" in card and "skipped" in card
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log] == [2, 4, 6] and all(np.isfinite(e["loss"]) for e in log)
    main([*argv, "--resume", "latest"])  # resumes from checkpoint-4 to the same end
    resumed = json.loads((out / "train_log.json").read_text())
    assert [(e["step"], e["loss"]) for e in resumed] == [(e["step"], e["loss"]) for e in log]
    refiner = CrystalRefinerPipeline.from_pretrained(out)
    x0 = _perovskite()
    x0.perturb(0.0)
    refined = refiner([x0], generator=torch.Generator().manual_seed(0)).structures[0]
    assert space_group(refined, 0.01) == 221
