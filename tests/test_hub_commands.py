"""`hf-crystal push` / `pull` against the local Hub: every folder kind round trips byte for byte."""

import json

import pytest
import torch
from factories import structures
from huggingface_hub import HfApi
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from hf_crystal.cards import render_dataset_card
from hf_crystal.commands import main
from hf_crystal.data import build_dataset, save_dataset
from hf_crystal.hub import HubFolderError, folder_kind, pull
from hf_crystal.refiner import CrystalFlowScheduler, CrystalRefinerPipeline, CSPNetModel
from hf_crystal.testing import save_tiny_llama


def _files(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    base = save_tiny_llama(tmp / "base")
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    adapter.save_pretrained(tmp / "adapter")
    torch.manual_seed(0)
    CrystalRefinerPipeline(
        model=CSPNetModel(hidden_dim=8, edge_dim=4, num_layers=1, time_dim=4, num_freqs=2),
        scheduler=CrystalFlowScheduler(),
    ).save_pretrained(tmp / "refiner")
    csv = tmp / "small.csv"
    small = [s for s in structures().values() if len(s) <= 9]
    csv.write_text("material_id,cif\n" + "".join(f'x{i},"{s.to(fmt="cif")}"\n' for i, s in enumerate(small)))
    dataset, report = build_dataset(csv, split_fractions=(1.0, 0.0, 0.0))
    save_dataset(dataset, tmp / "dataset", card=str(render_dataset_card(dataset, report)))
    return {"base": base, "adapter": tmp / "adapter", "refiner": tmp / "refiner", "dataset": tmp / "dataset"}


@pytest.mark.parametrize("kind", ["base", "adapter", "refiner", "dataset"])
def test_push_then_pull_round_trips(folders, kind, hub_server, capsys):
    folder = folders[kind]
    assert folder_kind(folder) == kind
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "optimizer.pt").write_bytes(b"pickle")  # stays local
    repo_id = hub_server.repo_id(kind)
    assert main(["push", str(folder), repo_id]) == 0
    printed = capsys.readouterr().out
    repo_type = "dataset" if kind == "dataset" else "model"
    sha = HfApi().repo_info(repo_id, repo_type=repo_type).sha
    assert f"pushed {kind} folder" in printed and printed.strip().endswith(sha)
    assert main(["pull", repo_id, "--repo-type", repo_type]) == 0
    local = pull(repo_id, repo_type=repo_type)
    assert str(local) == capsys.readouterr().out.strip()
    pushed = _files(folder)
    pulled = _files(local)
    assert {name for name in pushed if not name.startswith("checkpoints/")} == set(pulled) - {
        ".gitattributes"
    }
    assert all(pulled[name] == data for name, data in pushed.items() if name in pulled)
    assert "README.md" in pulled  # a model folder without a card gets one


def test_push_to_a_branch_and_pull_it(folders, hub_server, capsys):
    repo_id = hub_server.repo_id("branched")
    assert main(["push", str(folders["refiner"]), repo_id]) == 0
    config = folders["refiner"] / "scheduler" / "scheduler_config.json"
    original = config.read_text()
    try:
        config.write_text(json.dumps({**json.loads(original), "anti_annealing_slope": 5.0}))
        assert main(["push", str(folders["refiner"]), repo_id, "--revision", "annealed"]) == 0
    finally:
        config.write_text(original)
    capsys.readouterr()
    main_copy = pull(repo_id, revision="main") / "scheduler" / "scheduler_config.json"
    branch_copy = pull(repo_id, revision="annealed") / "scheduler" / "scheduler_config.json"
    assert json.loads(main_copy.read_text())["anti_annealing_slope"] == 0.0
    assert json.loads(branch_copy.read_text())["anti_annealing_slope"] == 5.0


def test_push_refuses_other_folders(tmp_path, hub_server, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    repo_id = hub_server.repo_id("refused")
    assert main(["push", str(tmp_path), repo_id]) == 2
    error = capsys.readouterr().err
    assert "is not a dataset, base model, adapter, refiner or Space folder" in error
    assert "adapter lacks adapter_config.json, adapter_model.safetensors" in error
    assert not HfApi().repo_exists(repo_id)  # refused before anything was created
    with pytest.raises(HubFolderError, match="is not a folder"):
        folder_kind(tmp_path / "notes.txt")


METRICS = {
    "n_samples": 200,
    "struct_valid": 0.93,
    "comp_valid": 0.81,
    "hull": "test hull",
    "stable_rate": None,
}


def test_card_command_on_a_folder_and_a_repo(folders, tmp_path, hub_server, capsys):
    import shutil

    from huggingface_hub import ModelCard

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    folder = tmp_path / "refiner"
    shutil.copytree(folders["refiner"], folder)
    for _ in range(2):  # a second run replaces, never duplicates
        assert main(["card", str(folder), "--metrics", str(metrics), "--dataset-id", "USER/mp20"]) == 0
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"struct_valid": 0.93, "comp_valid": 0.81}  # None is no measurement
    assert card.text.count("## Evaluation results") == 1 and "200 samples" in card.text
    assert card.data.eval_results[0].dataset_name == "USER/mp20"

    repo_id = hub_server.repo_id("carded")
    assert main(["push", str(folders["adapter"]), repo_id]) == 0
    assert main(["card", repo_id, "--metrics", str(metrics), "--push"]) == 0
    loaded = ModelCard.load(repo_id)
    assert {r.metric_type: r.metric_value for r in loaded.data.eval_results} == results
    assert main(["card", str(folder), "--metrics", str(metrics), "--push"]) == 2
    (tmp_path / "empty.json").write_text("{}")
    assert main(["card", str(folder), "--metrics", str(tmp_path / "empty.json")]) == 2
    assert "no number" in capsys.readouterr().err
