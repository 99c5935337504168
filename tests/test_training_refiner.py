"""Refiner training: LLM pairs (assignment, cache, resume) and the flow-matching run (both bases, exact resume)."""

import json

import numpy as np
import pytest
import torch
from factories import rocksalt, sodium_nitride, structures
from pymatgen.core import Structure
from training_helpers import crystal_dataset
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the tasks)
from hf_crystal.refiner import CrystalRefinerPipeline
from hf_crystal.testing import save_tiny_llama
from hf_crystal.text import decode
from hf_crystal.training import pairs as pairs_module
from hf_crystal.training.common import TrainingConfigError
from hf_crystal.training.pairs import PairSettings, assign_atoms, build_pairs, transport_cost
from hf_crystal.training.refiner import main, parse_args

TINY = ["--hidden_dim", "16", "--edge_dim", "8", "--num_layers", "1", "--time_dim", "8", "--num_freqs", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refiner")
    return save_tiny_llama(tmp / "llm"), crystal_dataset(tmp / "data")


def test_assignment_pairs_each_atom_with_its_nearest_same_element():
    x1 = rocksalt()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x1))
    moved = (x1.frac_coords[order] + rng.normal(0, 0.01, (len(x1), 3))) % 1
    x0 = Structure(x1.lattice, [x1[i].specie for i in order], moved)
    found = assign_atoms(x0, x1)
    assert [x0[i].specie for i in found] == [s.specie for s in x1]
    assert list(order[found]) == list(range(len(x1)))  # each x1 atom gets its own perturbed copy
    assert transport_cost(x0, x1, found) < 1e-3 < transport_cost(x0, x1, assign_atoms(x0, x1, optimal=False))


def test_assignment_refuses_different_compositions():
    with pytest.raises(ValueError, match="cannot pair"):
        assign_atoms(rocksalt(), sodium_nitride())


def test_pairs_keep_overlapping_atoms(tmp_path):
    """An LLM may write two atoms on one spot: the pair cache keeps both (a CIF reader would merge them)."""
    overlapping = "5.0 5.0 5.0\n90 90 90\nNa\n0.10 0.10 0.10\nCl\n0.10 0.10 0.10"

    def fake_pipe(conditions, **kwargs):
        return [[{"text": overlapping, "structure": decode(overlapping), "error": None}] for _ in conditions]

    x1 = Structure(rocksalt().lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (row,) = build_pairs(fake_pipe, ["x"], [x1], tmp_path, model_name="fake")
    x0 = Structure.from_str(row["x0"], fmt="json")
    assert len(x0) == 2 and x0.composition == x1.composition


def test_transport_cost_ignores_a_common_translation():
    x1 = rocksalt()
    x0 = Structure(x1.lattice, x1.species, (x1.frac_coords + 0.37) % 1)
    assert transport_cost(x0, x1) == pytest.approx(0, abs=1e-12)


def test_pairs_are_cached_and_resume(setup, tmp_path, monkeypatch):
    llm, _ = setup
    pipe = pipeline("crystal-generation", model=str(llm))
    small = {k: v for k, v in structures().items() if len(v) <= 9}
    ids, crystals = list(small), list(small.values())
    monkeypatch.setattr(pairs_module, "SHARD_SIZE", 3)
    calls = []
    real = pairs_module._pair_rows
    monkeypatch.setattr(pairs_module, "_pair_rows", lambda *a: calls.append(a[-1]) or real(*a))
    settings = PairSettings(batch_size=4)
    first = build_pairs(pipe, ids, crystals, tmp_path, settings, model_name=str(llm))
    assert calls == [0, 1, 2] and len(first) == len(crystals)
    for row, x1 in zip(first, crystals, strict=True):
        x0 = Structure.from_str(row["x0"], fmt="json")
        target = Structure.from_str(row["x1"], fmt="json")
        assert x0.composition == x1.composition == target.composition
        assert [s.specie for s in x0] == [s.specie for s in target]  # paired site by site
        assert row["cost_assigned"] <= row["cost_index"] + 1e-12
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (folder / "pairs-00001.jsonl").unlink()  # as if interrupted during the second shard
    again = build_pairs(pipe, ids, crystals, tmp_path, settings, model_name=str(llm))
    assert calls == [0, 1, 2, 1]
    assert again["x0"] == first["x0"]  # shards are seeded by their index
    other = build_pairs(
        pipe, ids, crystals, tmp_path, PairSettings(batch_size=4, seed=1), model_name=str(llm)
    )
    assert other["x0"] != first["x0"] and len(list(tmp_path.iterdir())) == 2


def test_pairs_cache_key_follows_an_embedded_adapters_and_its_bases_weights(tmp_path, monkeypatch):
    # Embedded models are retrained in place under their Hub ids: pairs must not be read from the old cache.
    from hf_crystal import embedded

    folders = {"hf-crystal/adapter": tmp_path / "adapter", "hf-crystal/base": tmp_path / "base"}
    for folder in folders.values():
        folder.mkdir()
    adapter, base = folders["hf-crystal/adapter"], folders["hf-crystal/base"]
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "hf-crystal/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (base / "model.safetensors").write_bytes(b"base weights")
    monkeypatch.setattr(embedded, "embedded_folder", lambda model, revision=None: folders.get(str(model)))
    x1 = rocksalt()
    key = lambda: pairs_module.pairs_cache_key("hf-crystal/adapter", None, ["a"], [x1], PairSettings())  # noqa: E731
    keys = [key()]
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained adapter")
    keys.append(key())
    (base / "model.safetensors").write_bytes(b"retrained base")
    keys.append(key())
    assert len(set(keys)) == 3 and key() == keys[-1]


# Fixed LLM pairs can be fitted closely; fresh uniform draws leave the velocity's irreducible variance.
@pytest.mark.parametrize(("base", "ratio"), [("uniform", 0.85), ("llm", 0.5)])
def test_training_lowers_the_loss_and_saves_a_refiner(setup, tmp_path, base, ratio):
    llm, data = setup
    out = tmp_path / "refiner"
    argv = ["--dataset", str(data), "--output_dir", str(out), "--base", base, "--max_steps", "150"]
    argv += [
        "--batch_size",
        "8",
        "--logging_steps",
        "25",
        "--warmup_steps",
        "10",
        "--learning_rate",
        "3e-3",
        *TINY,
    ]
    if base == "llm":
        argv += ["--llm", str(llm), "--pairs_cache_dir", str(tmp_path / "pairs"), "--base_noise_std", "0.01"]
        argv += ["--inference_noise_std", "0.04"]
    main(argv)
    log = json.loads((out / "train_log.json").read_text())
    assert log[-1]["step"] == 150 and log[-1]["loss"] < ratio * log[0]["loss"]
    assert {"model_index.json", "README.md", "loss.png"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "optimizer steps | 150" in card
    if base == "llm":
        assert "mean transport cost, optimal assignment" in card
    refiner = CrystalRefinerPipeline.from_pretrained(out)
    assert refiner.model.config.hidden_dim == 16
    assert refiner.scheduler.config.base_distribution == base
    assert refiner.scheduler.config.base_noise_std == (0.04 if base == "llm" else 0.0)


def test_resume_continues_exactly(setup, tmp_path):
    _, data = setup
    common = ["--dataset", str(data), "--base", "uniform", "--batch_size", "4", "--logging_steps", "5", *TINY]
    main([*common, "--output_dir", str(tmp_path / "whole"), "--max_steps", "20", "--save_steps", "10"])
    interrupted = tmp_path / "cut"
    main([*common, "--output_dir", str(interrupted), "--max_steps", "20", "--save_steps", "10"])
    # Drop what the second half produced, then resume from the step-10 checkpoint.
    (interrupted / "model_index.json").unlink()
    main([*common, "--output_dir", str(interrupted), "--max_steps", "20", "--save_steps", "10", "--resume"])
    whole = CrystalRefinerPipeline.from_pretrained(tmp_path / "whole").model.state_dict()
    resumed = CrystalRefinerPipeline.from_pretrained(interrupted).model.state_dict()
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    logs = [
        json.loads((folder / "train_log.json").read_text()) for folder in (tmp_path / "whole", interrupted)
    ]
    assert [e["loss"] for e in logs[0]] == pytest.approx([e["loss"] for e in logs[1]], rel=1e-5)


def test_options_and_mistakes(tmp_path):
    args = parse_args(["--dataset", "d", "--output_dir", "o", "--llm", "m", "--max_steps", "7"])
    assert (args.base, args.max_steps, args.learning_rate, args.ema_decay) == ("llm", 7, 3e-4, 0.999)
    config = tmp_path / "refiner.yaml"
    config.write_text("dataset: d\noutput_dir: o\nbase: uniform\nbatch_size: 32\n")
    args = parse_args(["--config", str(config), "--batch_size", "16"])
    assert (args.base, args.batch_size) == ("uniform", 16)
    with pytest.raises(TrainingConfigError, match="needs --llm"):
        parse_args(["--dataset", "d", "--output_dir", "o"])
    with pytest.raises(TrainingConfigError, match="base must be one of"):
        parse_args(["--dataset", "d", "--output_dir", "o", "--base", "gaussian"])
    with pytest.raises(TrainingConfigError, match="must be >= 0"):
        parse_args(["--dataset", "d", "--output_dir", "o", "--llm", "m", "--inference_noise_std", "-0.1"])
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        main(["--dataset", "d", "--output_dir", str(tmp_path / "none"), "--base", "uniform", "--resume"])
