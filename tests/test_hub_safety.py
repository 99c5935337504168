"""Load safety (safetensors only, opt-in for pickles), offline use from the cache, and interrupted pushes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import HfApi
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_crystal.hub import PushError, pull, push_folder
from hf_crystal.hub_access import UnsafeWeightsError
from hf_crystal.loading import load_crystal_model
from hf_crystal.refiner import CrystalFlowScheduler, CrystalRefinerPipeline, CSPNetModel
from hf_crystal.testing import save_tiny_llama, tiny_llama
from hf_crystal.tokenization import build_crystal_tokenizer


def _pickle_only_model(folder):
    tokenizer = build_crystal_tokenizer()
    model = tiny_llama(tokenizer)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def _pickle_only_adapter(base, folder):
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"])
    )
    adapter.save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(weights), folder / "adapter_model.bin")
    weights.unlink()
    return folder


def test_pickle_only_model_is_refused_unless_allowed(tmp_path, hub_server):
    folder = _pickle_only_model(tmp_path / "pickled")
    repo_id = hub_server.repo_id("pickled")
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(folder_path=str(folder), repo_id=repo_id)  # hf-crystal push would refuse it
    for source in (folder, repo_id):
        with pytest.raises(UnsafeWeightsError, match="only pickle files.*allow_pickle=True"):
            load_crystal_model(source)
        model, _ = load_crystal_model(source, allow_pickle=True)
        assert model.num_parameters() == tiny_llama().num_parameters()


def test_pickle_only_adapter_is_refused_unless_allowed(tmp_path):
    base = save_tiny_llama(tmp_path / "base")
    adapter = _pickle_only_adapter(base, tmp_path / "adapter")
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        load_crystal_model(adapter)
    model, _ = load_crystal_model(adapter, allow_pickle=True)
    assert "lora_A" in " ".join(name for name, _ in model.named_parameters())


def test_pickle_only_refiner_is_refused(tmp_path):
    torch.manual_seed(0)
    refiner = CrystalRefinerPipeline(
        model=CSPNetModel(hidden_dim=8, edge_dim=4, num_layers=1, time_dim=4, num_freqs=2),
        scheduler=CrystalFlowScheduler(),
    )
    refiner.save_pretrained(tmp_path / "refiner")
    weights = tmp_path / "refiner" / "model" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(OSError, match="safetensors"):
        CrystalRefinerPipeline.from_pretrained(tmp_path / "refiner")


def test_interrupted_push_leaves_the_repo_at_its_previous_commit(tmp_path, hub_server):
    folder = save_tiny_llama(tmp_path / "model")
    repo_id = hub_server.repo_id("interrupted")
    before = push_folder(folder, repo_id).oid
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    torch.manual_seed(1)
    tiny_llama(seed=1).save_pretrained(folder)  # new weights: a new LFS upload before the commit
    hub_server.drop_commits = True
    try:
        with pytest.raises(PushError, match="is unchanged"):
            push_folder(folder, repo_id)
    finally:
        hub_server.drop_commits = False
    assert HfApi().repo_info(repo_id).sha == before
    assert len(HfApi().list_repo_commits(repo_id)) == 2  # the repo's creation and the first push only
    after = push_folder(folder, repo_id).oid  # the same push goes through once the server answers
    assert after != before and HfApi().repo_info(repo_id).sha == after


OFFLINE_SCRIPT = """
import sys
from hf_crystal.data import load_crystal_dataset
from hf_crystal.loading import load_crystal_model
from hf_crystal.hub_access import HubOfflineError
from hf_crystal.refiner import CrystalRefinerPipeline

base, adapter, refiner, dataset, missing = sys.argv[1:]
load_crystal_model(base)
model, tokenizer = load_crystal_model(adapter)
CrystalRefinerPipeline.from_pretrained(refiner)
print(len(load_crystal_dataset(dataset, split="train")))
for load in (load_crystal_model, CrystalRefinerPipeline.from_pretrained, load_crystal_dataset):
    try:
        load(missing)
    except HubOfflineError as err:
        print("offline error:", err)
"""


def test_everything_downloaded_loads_offline(tmp_path, hub_server):
    from training_helpers import crystal_dataset

    base_id, adapter_id = hub_server.repo_id("base"), hub_server.repo_id("adapter")
    refiner_id, dataset_id = hub_server.repo_id("refiner"), hub_server.repo_id("data")
    base = save_tiny_llama(tmp_path / "base")
    push_folder(base, base_id)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"])
    )
    adapter.peft_config["default"].base_model_name_or_path = base_id
    adapter.save_pretrained(tmp_path / "adapter")
    push_folder(tmp_path / "adapter", adapter_id)
    torch.manual_seed(0)
    CrystalRefinerPipeline(
        model=CSPNetModel(hidden_dim=8, edge_dim=4, num_layers=1, time_dim=4, num_freqs=2),
        scheduler=CrystalFlowScheduler(),
    ).push_to_hub(refiner_id)
    data = crystal_dataset(tmp_path / "data")
    (data / "README.md").write_text("---\nlicense: mit\n---\n# test crystals\n")
    push_folder(data, dataset_id)
    for repo_id, repo_type in ((base_id, "model"), (adapter_id, "model"), (refiner_id, "model")):
        pull(repo_id, repo_type=repo_type)
    pull(dataset_id, repo_type="dataset")

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    argv = [base_id, adapter_id, refiner_id, dataset_id, hub_server.repo_id("never-downloaded")]
    out = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "8"
    assert len(lines) == 4 and all(
        "run `hf-crystal pull tester/never-downloaded" in line for line in lines[1:]
    )
