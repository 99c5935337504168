"""Push to a local Hub: a tiny base trained from scratch, then a LoRA adapter on it, loaded back by Hub id."""

import json

import pytest
import torch
import yaml
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from peft import AutoPeftModelForCausalLM
from training_helpers import crystal_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_crystal.prompts import generation_prompt
from hf_crystal.training import base, lora

STEPS = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--save_steps",
    "2",
    "--logging_steps",
    "1",
]


@pytest.fixture(scope="module")
def pushed_base(hub_server, tmp_path_factory):
    """(base repo id, dataset folder): the tiny preset trained two steps and pushed."""
    tmp = tmp_path_factory.mktemp("push")
    data = crystal_dataset(tmp / "data")
    repo_id = hub_server.repo_id("crystal-base")
    argv = ["--preset", "tiny", "--dataset", str(data), "--output_dir", str(tmp / "base"), *STEPS]
    base.train_base(*base.parse_args([*argv, "--push_to_hub", "--hub_model_id", repo_id]))
    return repo_id, data


def _files(repo_id):
    return set(HfApi().list_repo_files(repo_id))


def test_base_push_is_hub_shaped(pushed_base):
    files = _files(pushed_base[0])
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
    } <= files
    assert not any(f.startswith("checkpoints/") or f.endswith(".bin") for f in files)


def _logits(model, tokenizer):
    batch = tokenizer(
        generation_prompt({"formula": "SrTiO3"}) + "3.9 3.9 3.9\n90 90 90\nSr\n", return_tensors="pt"
    )
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_adapter_on_a_hub_base_is_pushed_and_loads_by_hub_id(pushed_base, hub_server, tmp_path):
    base_id, data = pushed_base
    adapter_id = hub_server.repo_id("crystal-adapter")
    argv = ["--model", base_id, "--dataset", str(data), "--output_dir", str(tmp_path / "adapter"), *STEPS]
    trainer = lora.train_lora(*lora.parse_args([*argv, "--push_to_hub", "--hub_model_id", adapter_id]))
    files = _files(adapter_id)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert not any(f.startswith(("tokenizer", "checkpoints/")) or f.endswith(".bin") for f in files)
    adapter_config = json.loads(open(hf_hub_download(adapter_id, "adapter_config.json")).read())
    assert adapter_config["base_model_name_or_path"] == base_id
    card = open(hf_hub_download(adapter_id, "README.md")).read()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == base_id and metadata["library_name"] == "peft"
    assert "crystal-generation" in metadata["tags"]

    tokenizer = AutoTokenizer.from_pretrained(base_id)
    expected = _logits(trainer.model, tokenizer)
    for loader in (AutoPeftModelForCausalLM, AutoModelForCausalLM):
        torch.testing.assert_close(
            _logits(loader.from_pretrained(adapter_id), tokenizer), expected, rtol=1e-5, atol=1e-5
        )


def test_adapter_on_a_local_copy_records_the_hub_id(pushed_base, hub_server, tmp_path):
    base_id, data = pushed_base
    local_base = snapshot_download(base_id, local_dir=tmp_path / "local-base")
    adapter_id = hub_server.repo_id("crystal-adapter-local")
    argv = ["--model", local_base, "--base_model_id", base_id, "--dataset", str(data)]
    argv += ["--output_dir", str(tmp_path / "adapter"), *STEPS, "--max_steps", "1"]
    lora.train_lora(*lora.parse_args([*argv, "--push_to_hub", "--hub_model_id", adapter_id]))
    adapter_config = json.loads(open(hf_hub_download(adapter_id, "adapter_config.json")).read())
    assert adapter_config["base_model_name_or_path"] == base_id
    assert (
        AutoPeftModelForCausalLM.from_pretrained(adapter_id).peft_config["default"].base_model_name_or_path
        == base_id
    )
