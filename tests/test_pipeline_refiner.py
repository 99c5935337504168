"""The refiner inside pipeline("crystal-generation"), `hf-crystal generate --refiner` and `hf-crystal refine`."""

import json

import numpy as np
import pytest
import torch
from factories import rocksalt, structures
from pymatgen.core import Structure
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the tasks)
from hf_crystal.commands import main
from hf_crystal.refiner import CrystalFlowScheduler, CrystalRefinerPipeline, CSPNetModel
from hf_crystal.structure_io import read_structures
from hf_crystal.testing import save_tiny_llama

TINY = dict(hidden_dim=16, edge_dim=8, num_layers=1, time_dim=8, num_freqs=4)


def _refiner(**scheduler) -> CrystalRefinerPipeline:
    torch.manual_seed(0)
    return CrystalRefinerPipeline(model=CSPNetModel(**TINY), scheduler=CrystalFlowScheduler(**scheduler))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("with-refiner")
    _refiner().save_pretrained(tmp / "refiner")
    return save_tiny_llama(tmp / "llm"), tmp / "refiner"


def test_samples_carry_both_structures(folders):
    llm, refiner = folders
    pipe = pipeline("crystal-generation", model=str(llm), refiner=str(refiner))
    groups = pipe([{"formula": "NaCl"}, {}], num_return_sequences=3, max_sites=4, seed=0, batch_size=2)
    for sample in (s for group in groups for s in group):
        llm_structure, refined = sample["structure"], sample["refined_structure"]
        assert refined.composition == llm_structure.composition  # atom types and counts never change
        assert isinstance(sample["refined_valid"], bool)
        assert not torch.allclose(
            torch.tensor(refined.lattice.abc), torch.tensor(llm_structure.get_reduced_structure().lattice.abc)
        )
    one = pipe({"formula": "NaCl"}, max_sites=4, seed=0, refine_steps=1)[0]["refined_structure"]
    many = pipe({"formula": "NaCl"}, max_sites=4, seed=0, refine_steps=20)[0]["refined_structure"]
    assert one.lattice.abc != many.lattice.abc


def test_unparsed_samples_pass_through(folders):
    llm, refiner = folders
    pipe = pipeline("crystal-generation", model=str(llm), refiner=_refiner())
    samples = pipe(4, constrain=False, max_new_tokens=8, seed=0, batch_size=2)
    assert all(s["structure"] is None and s["refined_structure"] is None for s in samples)
    assert not any(s["refined_valid"] for s in samples)


def test_without_a_refiner_nothing_changes(folders):
    llm, _ = folders
    samples = pipeline("crystal-generation", model=str(llm))(2, max_sites=3, seed=0)
    assert set(samples[0]) == {
        "text",
        "structure",
        "valid",
        "error",
        "conditions",
        "attempts",
        "spacegroup",
        "wyckoff",
    }


def test_refiner_from_the_hub(folders, hub_server):
    llm, refiner = folders
    repo_id = hub_server.repo_id("refiner")
    CrystalRefinerPipeline.from_pretrained(refiner).push_to_hub(repo_id)
    kwargs = {"max_sites": 4, "seed": 3, "refine_steps": 5}
    by_id = pipeline("crystal-generation", model=str(llm), refiner=repo_id)({"formula": "NaCl"}, **kwargs)
    by_folder = pipeline("crystal-generation", model=str(llm), refiner=str(refiner))(
        {"formula": "NaCl"}, **kwargs
    )
    assert by_id[0]["refined_structure"] == by_folder[0]["refined_structure"]


def test_uniform_base_refiner_keeps_only_the_atoms():
    refiner = _refiner(base_distribution="uniform", log_length_mean=[1.5] * 3, log_length_std=[0.2] * 3)
    nacl = rocksalt()
    shifted = Structure(nacl.lattice.scale(2 * nacl.volume), nacl.species, (nacl.frac_coords + 0.3) % 1)
    a = refiner([nacl], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).structures[0]
    b = refiner([shifted], num_inference_steps=3, generator=torch.Generator().manual_seed(0)).structures[0]
    assert a == b and a.composition == nacl.composition
    with pytest.raises(ValueError, match="log_length_mean"):
        CrystalFlowScheduler(base_distribution="uniform")


def test_generate_with_refiner_writes_both_files(folders, tmp_path, capsys):
    llm, refiner = folders
    out = tmp_path / "samples.cif"
    argv = ["generate", "--model", str(llm), "--refiner", str(refiner), "--refine-steps", "3", "--num", "5"]
    assert main([*argv, "--formula", "NaCl", "--batch-size", "3", "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generated 5, parsed 5" in printed and "refined 5" in printed and "passed through 0" in printed
    refined = read_structures(out)
    llm_samples = read_structures(tmp_path / "samples.llm.cif")
    assert refined[0] == llm_samples[0] == [f"sample-{i:06d}" for i in range(5)]
    assert [s.composition for s in refined[1]] == [s.composition for s in llm_samples[1]]
    assert refined[1] != llm_samples[1]


def test_refine_command(folders, tmp_path, capsys):
    _, refiner = folders
    source = tmp_path / "in.cif"
    crystals = {k.split(" ")[0]: s for k, s in structures().items() if len(s) <= 9}
    source.write_text("".join(s.to(fmt="cif").replace("data_", f"data_{k}_", 1) for k, s in crystals.items()))
    out = tmp_path / "refined.cif"
    assert main(["refine", str(source), "--refiner", str(refiner), "--steps", "4", "--out", str(out)]) == 0
    assert f"refined {len(crystals)} structures" in capsys.readouterr().out
    ids, refined, skipped = read_structures(out)
    assert not skipped and len(refined) == len(crystals)
    assert [s.composition for s in refined] == [s.composition for s in crystals.values()]
    assert main(["refine", str(source), "--refiner", str(refiner), "--out", str(out)]) == 2  # exists
    assert main(["refine", str(source), "--refiner", str(refiner), "--out", str(tmp_path / "x.csv")]) == 2


def test_base_noise_separates_atoms_on_one_spot():
    """An equivariant flow moves two atoms on the same spot identically; the base noise breaks the tie."""
    nacl = rocksalt()
    twin = Structure(
        nacl.lattice,
        ["Na", "Na", *nacl.species[1:]],
        [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], *nacl.frac_coords[1:]],
    )

    def spread(refiner):
        out = refiner([twin], num_inference_steps=5, generator=torch.Generator().manual_seed(0)).structures[0]
        return out.get_distance(0, 1)

    assert spread(_refiner()) < 1e-6
    noisy = _refiner(base_noise_std=0.02)
    assert spread(noisy) > 1e-3
    assert noisy.scheduler.config.base_noise_std == 0.02


def test_refine_command_is_seeded(tmp_path):
    """The base noise comes from --seed: the same seed gives the same file, another seed another one."""
    _refiner(base_noise_std=0.05).save_pretrained(tmp_path / "noisy")
    source = tmp_path / "in.cif"
    source.write_text(rocksalt().to(fmt="cif"))
    texts = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.cif"
        argv = ["refine", str(source), "--refiner", str(tmp_path / "noisy"), "--no-symmetry", "--seed", seed]
        assert main([*argv, "--steps", "3", "--out", str(out)]) == 0
        texts.append(out.read_text())
    assert texts[0] == texts[1] != texts[2]


class _Scrambler:
    """A stand-in refiner that moves every atom at random (no symmetry kept), as a poor refiner could."""

    scheduler = None

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, structures, batch_size=1, **options):
        from types import SimpleNamespace

        rng = np.random.default_rng(0)
        moved = [s.copy() for s in structures]
        for s in moved:
            for i in range(len(s)):
                s.translate_sites([i], rng.normal(0, 0.3, 3), frac_coords=False)
        return SimpleNamespace(structures=moved, symmetry_cases=["tolerance"] * len(moved))


def test_refinement_that_leaves_a_requested_group_is_not_applied(tmp_path):
    from hf_crystal.symmetry import KEPT_AS_WRITTEN, space_group

    folder = save_tiny_llama(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "crystal_format": "wyckoff"}))
    pipe = pipeline("crystal-generation", model=str(folder), refiner=_Scrambler())
    asked = pipe({"formula": "NaCl", "spacegroup": 225}, num_return_sequences=3, seed=0)
    for sample in asked:
        assert space_group(sample["structure"], 0.1) == 225
        assert (
            sample["refined_structure"] is sample["structure"]
            and sample["refine_symmetry"] == KEPT_AS_WRITTEN
        )
    for sample in [
        *pipe({"formula": "NaCl"}, num_return_sequences=3, seed=0),  # no group asked for
        *pipe(
            {"formula": "NaCl", "spacegroup": 225}, num_return_sequences=3, seed=0, symmetry_tolerance=None
        ),
    ]:
        assert (
            sample["refined_structure"] is not sample["structure"]
            and sample["refine_symmetry"] == "tolerance"
        )
