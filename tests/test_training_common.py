"""Training configuration, task data with fresh augmentation per epoch, trainer arguments (no training here)."""

from pathlib import Path

import pytest
import torch
from factories import structures
from training_helpers import crystal_dataset

from hf_crystal.prompts import TaskMix
from hf_crystal.text import decode
from hf_crystal.training.base import BaseTrainingConfig
from hf_crystal.training.common import (
    TrainingConfigError,
    epochs_to_draw,
    load_task_structures,
    resume_checkpoint,
    sft_config,
    task_dataset,
)
from hf_crystal.training.lora import LoraTrainingConfig
from hf_crystal.training.presets import MODEL_PRESETS, llama_config

CONFIGS = Path(__file__).parents[1] / "training" / "configs"
SMALL = [s for s in structures().values() if len(s) <= 16]


def _lattice_a(completion: str) -> float:
    return decode(completion).lattice.a


def test_each_epoch_holds_every_structure_once_with_a_fresh_translation():
    mix = TaskMix(infill_fraction=0.0)  # generation tasks only: the completion is the crystal
    data = task_dataset(SMALL, [{}] * len(SMALL), mix, epochs=3, seed=5)
    n = len(SMALL)
    assert len(data) == 3 * n
    lattices = sorted(round(s.lattice.a, 1) for s in SMALL)
    epochs = [data[e * n : (e + 1) * n]["completion"] for e in range(3)]
    for completions in epochs:
        assert sorted(round(_lattice_a(c), 1) for c in completions) == lattices
    # the same structure is written with a different translation in every epoch
    by_structure = [{round(_lattice_a(c), 1): c for c in completions} for completions in epochs]
    for a in lattices:
        assert len({epoch[a] for epoch in by_structure}) == 3
    assert epochs[0] != epochs[1]  # and the order changes too, or at least the texts


def test_task_dataset_is_a_function_of_the_seed():
    props = [{"band_gap": 1.0}] * len(SMALL)
    first = task_dataset(SMALL, props, TaskMix(), epochs=2, seed=1)
    assert first.to_dict() == task_dataset(SMALL, props, TaskMix(), epochs=2, seed=1).to_dict()
    assert first.to_dict() != task_dataset(SMALL, props, TaskMix(), epochs=2, seed=2).to_dict()
    assert any(p.startswith("Below is a partial description") for p in first["prompt"])  # infill drawn too


def test_load_task_structures_reads_conditions_from_columns(tmp_path):
    folder = crystal_dataset(tmp_path / "data")
    config = BaseTrainingConfig.load(
        dataset=str(folder),
        output_dir=str(tmp_path / "out"),
        property_columns={"formation_energy_per_atom": "e_above_hull"},
    )
    structures_, properties = load_task_structures(config)
    assert len(structures_) == len(SMALL)
    assert set(properties[0]) == {"spacegroup", "e_above_hull", "formation_energy_per_atom", "band_gap"}
    assert all(p["formation_energy_per_atom"] == p["e_above_hull"] for p in properties)
    missing = BaseTrainingConfig.load(
        dataset=str(folder), output_dir="x", property_columns={"band_gap": "no_such_column"}
    )
    with pytest.raises(TrainingConfigError, match="no_such_column"):
        load_task_structures(missing)
    with pytest.raises(TrainingConfigError, match="cannot load split"):
        load_task_structures(BaseTrainingConfig.load(dataset=str(folder), output_dir="x", train_split="test"))


def test_config_from_yaml_with_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "model: org/base\nepochs: 3\nsft:\n  weight_decay: 0.1\n  logging_first_step: false\n"
    )
    config = LoraTrainingConfig.load(
        yaml_file, dataset="d", output_dir="o", epochs=None, lora_r=16, sft={"weight_decay": 0.2}
    )
    assert (config.model, config.epochs, config.lora_r) == ("org/base", 3, 16)
    assert config.sft == {"weight_decay": 0.2, "logging_first_step": False}  # merged, the flag wins
    assert (config.lora_alpha, config.lora_dropout, config.target_modules) == (32, 0.05, ["q_proj", "v_proj"])
    assert config.base_hub_id == "org/base"
    with pytest.raises(TrainingConfigError, match="unknown options"):
        LoraTrainingConfig.load(yaml_file, dataset="d", output_dir="o", lora_rank=4)
    with pytest.raises(TrainingConfigError, match="'output_dir' is required"):
        LoraTrainingConfig.load(yaml_file, dataset="d")
    with pytest.raises(TrainingConfigError, match="unknown conditions"):
        BaseTrainingConfig.load(dataset="d", output_dir="o", conditions=["colour"])


def test_local_base_needs_a_hub_id_to_push(tmp_path):
    with pytest.raises(TrainingConfigError, match="--base-model-id"):
        LoraTrainingConfig.load(model=str(tmp_path), dataset="d", output_dir="o", push_to_hub="me/adapter")
    config = LoraTrainingConfig.load(
        model=str(tmp_path), base_model_id="org/base", dataset="d", output_dir="o", push_to_hub="me/adapter"
    )
    assert config.base_hub_id == "org/base"
    assert not config.own_tokenizer


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("base"):
        assert BaseTrainingConfig.load(path, dataset="d", output_dir="o").preset in MODEL_PRESETS
    else:
        assert (
            LoraTrainingConfig.load(path, dataset="d", output_dir="o", model="org/base").lora_config().r == 8
        )


def test_sft_config_on_cpu_and_loss_options(tmp_path):
    config = LoraTrainingConfig.load(model="org/base", dataset="d", output_dir=str(tmp_path))
    args = sft_config(config)
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (1e-4, "cosine", 100)
    assert args.num_train_epochs == 1 and args.train_sampling_strategy == "sequential"
    assert args.completion_only_loss is True and args.max_length == 2048
    if not torch.cuda.is_available():
        assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    full = LoraTrainingConfig.load(
        model="m", dataset="d", output_dir="o", completion_only_loss=False, sft={"weight_decay": 0.3}
    )
    assert sft_config(full).completion_only_loss is False and sft_config(full).weight_decay == 0.3
    with pytest.raises(TrainingConfigError, match="invalid trainer options"):
        sft_config(LoraTrainingConfig.load(model="m", dataset="d", output_dir="o", sft={"no_such": 1}))


def test_epochs_to_draw_covers_max_steps():
    config = BaseTrainingConfig.load(dataset="d", output_dir="o", epochs=4)
    assert epochs_to_draw(config, sft_config(config), 10) == 4
    config = BaseTrainingConfig.load(dataset="d", output_dir="o", max_steps=7, per_device_train_batch_size=3)
    assert epochs_to_draw(config, sft_config(config), 10) == 3  # 21 examples from 10 structures


def test_resume_checkpoint(tmp_path):
    config = BaseTrainingConfig.load(dataset="d", output_dir=str(tmp_path), resume=True)
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        resume_checkpoint(config)
    for step in (2, 10):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    assert resume_checkpoint(config).endswith("checkpoint-10")
    assert resume_checkpoint(BaseTrainingConfig.load(dataset="d", output_dir="o")) is None


def test_presets_sizes():
    from hf_crystal.tokenization import build_crystal_tokenizer

    tokenizer = build_crystal_tokenizer()
    counts = {}
    for name in MODEL_PRESETS:
        with torch.device("meta"):
            from transformers import LlamaForCausalLM

            counts[name] = LlamaForCausalLM(llama_config(name, tokenizer)).num_parameters()
    assert 0.5e6 < counts["tiny"] < 1.5e6
    assert 3e6 < counts["small"] < 7e6
    assert 15e6 < counts["base"] < 25e6
    with pytest.raises(ValueError, match="unknown model preset"):
        llama_config("huge", tokenizer)
