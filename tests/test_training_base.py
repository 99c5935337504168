"""The from-scratch base model: `hf-crystal train base` on the tiny preset, a few CPU steps."""

import json

import pytest
import torch
import yaml
from training_helpers import crystal_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_crystal.commands import main
from hf_crystal.prompts import generation_prompt
from hf_crystal.testing import llama_style_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    data = crystal_dataset(tmp / "data")
    out = tmp / "model"
    argv = ["train", "base", "--preset", "tiny", "--dataset", str(data), "--output_dir", str(out)]
    argv += [
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
    ]
    argv += ["--dataset_id", "tester/crystal-text", "--license", "mit", "--weight_decay", "0.01"]
    assert main(argv) == 0  # any SFTConfig flag (here weight_decay) goes straight to the trainer
    return out


def test_output_folder_is_hub_shaped(trained):
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
    } <= names
    assert "training_args.bin" not in names  # no pickles in what gets pushed
    assert (trained / "checkpoints" / "checkpoint-2").is_dir()
    log = json.loads((trained / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]


def test_loads_with_auto_classes_and_generates(trained):
    model = AutoModelForCausalLM.from_pretrained(trained)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert model.config.model_type == "llama" and 0.5e6 < model.num_parameters() < 1.5e6
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert len(tokenizer("\n", add_special_tokens=False)["input_ids"]) == 1  # the crystal tokenizer
    inputs = tokenizer(generation_prompt({"formula": "NaCl"}), return_tensors="pt")
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=8)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(output[0], skip_special_tokens=True), str)


def test_card_metadata(trained):
    text = (trained / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert metadata["datasets"] == ["tester/crystal-text"]
    assert metadata["license"] == "mit"
    assert "crystal-generation" in metadata["tags"]
    assert metadata["hyperparameters"]["preset"] == "tiny"
    assert metadata["hyperparameters"]["max_steps"] == 3
    assert metadata["hyperparameters"]["learning_rate"] == 1e-3  # the base default, not TRL's 2e-5
    assert "base_model" not in metadata and "model-index" not in metadata  # nothing measured, nothing shown
    assert "| optimizer steps | 3 |" in text


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "base", "--dataset", str(tmp_path / "missing"), "--output_dir", str(tmp_path)]) == 2
    assert main(["train", "base", "--dataset", "d", "--output_dir", str(tmp_path), "--resume"]) == 2
    assert main(["train", "base", "--dataset", "d", "--output_dir", "o", "--sft", "bf16=true"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("hf-crystal: error:") for line in errors)
    assert "nothing to resume" in errors[1] and "--sft" in errors[2]


def test_continues_a_trained_model(trained, tmp_path, capsys):
    out = tmp_path / "continued"
    argv = ["train", "base", "--model_name_or_path", str(trained), "--dataset", str(trained.parent / "data")]
    argv += ["--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2"]
    assert main([*argv, "--learning_rate", "0"]) == 0  # no update: the weights are the source's
    source = AutoModelForCausalLM.from_pretrained(trained).state_dict()
    continued = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert source.keys() == continued.keys()
    assert all(torch.equal(source[k], continued[k]) for k in source)
    metadata = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert metadata["hyperparameters"]["continued from"] == str(trained)
    assert "preset" not in metadata["hyperparameters"]

    assert main([*argv, "--model_overrides", '{"num_hidden_layers": 2}']) == 2
    assert "keeps its size" in capsys.readouterr().err
    tiny_llama(llama_style_tokenizer(bpe_size=300)).save_pretrained(tmp_path / "other")
    argv[3] = str(tmp_path / "other")  # a LLaMA with another vocabulary: `train lora` is for those
    assert main(argv) == 2
    assert "continue only a model that `train base` trained" in capsys.readouterr().err
