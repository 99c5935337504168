"""Option parsing (TrlParser over script arguments, SFTConfig, ModelConfig), task data with fresh
augmentation per epoch, trainer arguments (no training here)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import structures
from training_helpers import crystal_dataset
from trl import get_peft_config

from hf_crystal.commands import main as cli
from hf_crystal.prompts import CONDITIONS, TaskMix
from hf_crystal.text import decode
from hf_crystal.training import base, lora
from hf_crystal.training.common import (
    TrainingConfigError,
    epochs_to_draw,
    load_task_structures,
    resume_checkpoint,
    task_dataset,
    trainer_args,
)
from hf_crystal.training.presets import MODEL_PRESETS, llama_config

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "training" / "configs"
SMALL = [s for s in structures().values() if len(s) <= 16]
REQUIRED = ["--dataset", "d", "--output_dir", "o"]


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
    folder = str(crystal_dataset(tmp_path / "data"))
    argv = ["--dataset", folder, "--output_dir", str(tmp_path / "out")]
    script_args, _, _ = base.parse_args(
        [*argv, "--property_columns", '{"formation_energy_per_atom": "e_above_hull"}']
    )
    structures_, properties = load_task_structures(script_args)
    assert len(structures_) == len(SMALL)
    assert set(properties[0]) == {"spacegroup", "e_above_hull", "formation_energy_per_atom", "band_gap"}
    assert all(p["formation_energy_per_atom"] == p["e_above_hull"] for p in properties)
    missing, _, _ = base.parse_args([*argv, "--property_columns", '{"band_gap": "no_such_column"}'])
    with pytest.raises(TrainingConfigError, match="no_such_column"):
        load_task_structures(missing)
    with pytest.raises(TrainingConfigError, match="cannot load split"):
        load_task_structures(base.parse_args([*argv, "--train_split", "test"])[0])


def test_config_less_lora_parse_carries_the_paper_defaults(tmp_path):
    script_args, args, model_args = lora.parse_args(
        ["--model", "org/base", "--dataset", "d", "--output_dir", "o"]
    )
    assert model_args.model_name_or_path == "org/base" and model_args.use_peft is True
    assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (8, 32, 0.05)
    assert model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (1e-4, "cosine", 100)
    assert (args.per_device_train_batch_size, args.max_length, args.completion_only_loss) == (1, 2048, True)
    assert args.num_train_epochs == 1 and args.train_sampling_strategy == "sequential"
    assert args.output_dir == "o" and not args.push_to_hub
    assert (
        script_args.epochs == 10 and script_args.conditions == list(CONDITIONS) and script_args.resume is None
    )
    if not torch.cuda.is_available():
        assert args.use_cpu and not args.bf16 and not args.activation_checkpointing
    peft_config = get_peft_config(model_args)
    assert (peft_config.r, peft_config.lora_alpha, set(peft_config.target_modules)) == (
        8,
        32,
        {"q_proj", "v_proj"},
    )


def test_base_parse_carries_the_base_defaults():
    script_args, args, model_args = base.parse_args(REQUIRED)
    assert (script_args.preset, script_args.model_overrides, script_args.epochs) == ("small", {}, 10)
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (1e-3, "cosine", 100)
    assert (args.per_device_train_batch_size, args.max_length) == (16, 1024)
    assert args.activation_checkpointing is False and args.completion_only_loss is True
    assert not model_args.use_peft


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_yaml_config_with_overriding_flags(tmp_path):
    config = _write(
        tmp_path / "c.yaml",
        "model_name_or_path: org/base\nepochs: 3\nlearning_rate: 2.0e-4\nlora_r: 4\nlora_target_modules: [q_proj]\n"
        "weight_decay: 0.1\nlogging_first_step: false\ncompletion_only_loss: false\n",
    )
    script_args, args, model_args = lora.parse_args(
        [
            "--config",
            config,
            *REQUIRED,
            "--learning_rate",
            "3e-4",
            "--lora_r",
            "16",
            "--bf16",
            "--eval_strategy",
            "steps",
        ]
    )
    assert (args.learning_rate, model_args.lora_r) == (3e-4, 16)  # the flags win
    assert (script_args.epochs, args.weight_decay, args.logging_first_step) == (
        3,
        0.1,
        False,
    )  # from the YAML
    assert args.completion_only_loss is False and args.bf16 is True and args.eval_strategy.value == "steps"
    assert (model_args.model_name_or_path, model_args.lora_alpha) == ("org/base", 32)  # untouched default
    assert lora.peft_config(model_args).target_modules == {"q_proj"}  # one name, not a regex
    assert lora.base_hub_id(script_args, model_args) == "org/base"

    config = _write(
        tmp_path / "b.yaml", "preset: tiny\nmodel_overrides: {num_hidden_layers: 2}\nsave_steps: 7\n"
    )
    script_args, args, _ = base.parse_args(
        ["--config", config, *REQUIRED, "--save_steps", "9", "--seed", "3"]
    )
    assert (script_args.preset, script_args.model_overrides) == ("tiny", {"num_hidden_layers": 2})
    assert (args.save_steps, args.seed) == (9, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "d"], "required: --output_dir"),
        ([*REQUIRED], "the base is required: --model"),
        ([*REQUIRED, "--model", "m", "--lora_rank", "4"], "--lora_rank"),
        ([*REQUIRED, "--model", "m", "--conditions", "colour"], "unknown conditions"),
        ([*REQUIRED, "--model", "m", "--num_train_epochs", "3"], "set --epochs instead"),
        ([*REQUIRED, "--model", "m", "--use_peft", "false"], "use_peft must stay true"),
        ([*REQUIRED, "--model", "m", "--lora_r", "x"], "invalid int value"),
        ([*REQUIRED, "--model", "m", "--property_columns", "band_gap=bg"], "JSON object"),
        ([*REQUIRED, "--model", "m", "--config", "no/such.yaml"], "cannot read the config"),
    ],
)
def test_lora_mistakes_are_training_config_errors(argv, message):
    with pytest.raises(TrainingConfigError, match=message):
        lora.parse_args(argv)


def test_old_yaml_keys_and_lora_options_on_base_are_rejected(tmp_path):
    old = _write(tmp_path / "old.yaml", "target_modules: [q_proj]\nsft:\n  bf16: true\n")
    with pytest.raises(TrainingConfigError, match="target_modules"):
        lora.parse_args(["--config", old, *REQUIRED, "--model", "m"])
    with pytest.raises(TrainingConfigError, match="lora_r"):
        base.parse_args([*REQUIRED, "--lora_r", "4"])


def test_local_base_needs_a_hub_id_to_push(tmp_path):
    argv = [*REQUIRED, "--model", str(tmp_path), "--push_to_hub", "--hub_model_id", "me/adapter"]
    with pytest.raises(TrainingConfigError, match="--base_model_id"):
        lora.parse_args(argv)
    script_args, args, model_args = lora.parse_args([*argv, "--base_model_id", "org/base"])
    assert lora.base_hub_id(script_args, model_args) == "org/base"
    assert args.push_to_hub and args.hub_model_id == "me/adapter"


TRAINING_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("accelerate_"))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if path.name.startswith("base"):
        assert base.parse_args(["--config", str(path), *REQUIRED])[0].preset in MODEL_PRESETS
    else:
        _, args, model_args = lora.parse_args(["--config", str(path), *REQUIRED, "--model", "org/base"])
        assert get_peft_config(model_args).r == 8 and args.learning_rate == 1e-4


def test_trainer_args_checkpoint_in_the_subfolder_and_push_nothing(tmp_path):
    _, args, _ = lora.parse_args(
        [
            "--model",
            "m",
            "--dataset",
            "d",
            "--output_dir",
            str(tmp_path),
            "--push_to_hub",
            "--weight_decay",
            "0.3",
        ]
    )
    run_args = trainer_args(args)
    assert run_args.output_dir == str(tmp_path / "checkpoints") and args.output_dir == str(tmp_path)
    assert run_args.push_to_hub is False and args.push_to_hub is True
    assert run_args.weight_decay == 0.3 and run_args.learning_rate == 1e-4


def test_epochs_to_draw_covers_max_steps():
    script_args, args, _ = base.parse_args([*REQUIRED, "--epochs", "4"])
    assert epochs_to_draw(script_args, args, 10) == 4
    script_args, args, _ = base.parse_args(
        [*REQUIRED, "--max_steps", "7", "--per_device_train_batch_size", "3"]
    )
    assert epochs_to_draw(script_args, args, 10) == 3  # 21 examples from 10 structures


def test_resume_checkpoint(tmp_path):
    script_args, args, _ = base.parse_args(["--dataset", "d", "--output_dir", str(tmp_path), "--resume"])
    assert script_args.resume == "latest"
    with pytest.raises(TrainingConfigError, match="nothing to resume"):
        resume_checkpoint(script_args, args)
    for step in (2, 10):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    assert resume_checkpoint(script_args, args).endswith("checkpoint-10")
    chosen = str(tmp_path / "checkpoints" / "checkpoint-2")
    assert resume_checkpoint(*base.parse_args([*REQUIRED, "--resume", chosen])[:2]) == chosen
    assert resume_checkpoint(*base.parse_args([*REQUIRED, "--resume_from_checkpoint", chosen])[:2]) == chosen
    assert resume_checkpoint(*base.parse_args(REQUIRED)[:2]) is None


def test_command_hands_the_command_line_to_trl_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["train", "lora", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "hf-crystal train lora" in out
    assert all(
        flag in out
        for flag in ("--lora_r", "--learning_rate", "--eval_strategy", "--base_model_id", "--config")
    )


def test_command_module_imports_nothing_heavy():
    code = (
        "import sys, hf_crystal.commands.train\n"
        "heavy = [m for m in ('torch', 'trl', 'transformers', 'hf_crystal.training') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


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


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("accelerate_*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)
    assert config.num_machines == 1 and config.num_processes >= 1
