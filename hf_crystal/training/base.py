"""Train a small LLaMA-architecture crystal model from scratch (full fine-tuning with TRL's SFTTrainer).

Options: `BaseScriptArguments` (ours: data, task mix, preset, card), `trl.SFTConfig` (every trainer flag)
and `trl.ModelConfig` (only `attn_implementation`, `model_name_or_path` and `model_revision` apply), read by
`parse_args` through `trl.TrlParser`. Defaults: lr 1e-3 cosine with 100 warmup steps, batch 16, max
length 1024, no activation checkpointing, 10 freshly augmented epochs. `--model_name_or_path` (a folder or
Hub id of a model this script trained) continues pretraining it instead of starting from random weights.

The output folder is Hub-shaped: config.json, model.safetensors, generation_config.json, the crystal
tokenizer, README.md (model card); checkpoints go to its `checkpoints/` subfolder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaForCausalLM, TrainerCallback, set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from hf_crystal.embedded import resolve
from hf_crystal.prompts import TaskMix
from hf_crystal.sampling import generation_config
from hf_crystal.tokenization import build_crystal_tokenizer
from hf_crystal.training.common import (
    CrystalScriptArguments,
    TrainingConfigError,
    epochs_to_draw,
    finish_run,
    hyperparameters,
    json_dict,
    load_task_structures,
    make_parser,
    parse_configs,
    record_format,
    resume_checkpoint,
    task_dataset,
    trainer_args,
    validate,
)
from hf_crystal.training.presets import MAX_POSITION_EMBEDDINGS, MODEL_PRESETS, llama_config

__all__ = ["BASE_DEFAULTS", "BaseScriptArguments", "main", "make_base_parser", "parse_args", "train_base"]

#: Parser defaults of `train base` (YAML and flags override them); see also `common.COMMON_DEFAULTS`.
BASE_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,  # a usual peak learning rate for a few-million-parameter transformer from scratch
    "per_device_train_batch_size": 16,
    "max_length": MAX_POSITION_EMBEDDINGS,
    "gradient_checkpointing": False,  # the presets are small; `--activation_checkpointing` turns it on
}
# ModelConfig options of `train base`: the others describe a pretrained base for `train lora`.
_MODEL_OPTIONS = ("attn_implementation", "model_name_or_path", "model_revision")


@dataclass
class BaseScriptArguments(CrystalScriptArguments):
    """`CrystalScriptArguments` plus the model size: a preset name and optional `LlamaConfig` overrides."""

    preset: str = field(default="small", metadata={"help": "model size", "choices": list(MODEL_PRESETS)})
    model_overrides: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "LlamaConfig values over the preset: JSON object, e.g. '{\"num_hidden_layers\": 8}'"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in MODEL_PRESETS:
            raise TrainingConfigError(f"unknown preset {self.preset!r}; choose one of {list(MODEL_PRESETS)}")
        self.model_overrides = json_dict(self.model_overrides, "model_overrides")


def make_base_parser(prog: str | None = None) -> TrlParser:
    """The `TrlParser` of `train base`: (BaseScriptArguments, SFTConfig, ModelConfig) with `BASE_DEFAULTS`."""
    return make_parser(
        BaseScriptArguments,
        BASE_DEFAULTS,
        prog=prog,
        description="Train a LLaMA-architecture causal LM from scratch on crystal text (TRL SFTTrainer).",
    )


def _validate(script_args: BaseScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    validate(script_args, training_args)
    default = ModelConfig()
    changed = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name not in _MODEL_OPTIONS and getattr(model_args, f.name) != getattr(default, f.name)
    ]
    if changed:
        raise TrainingConfigError(
            f"train base trains a model from scratch: {changed} apply to a pretrained base (train lora)"
        )
    if model_args.model_name_or_path and script_args.model_overrides:
        raise TrainingConfigError(
            "--model_overrides sizes a new model; a model continued from --model_name_or_path keeps its size"
        )


def parse_args(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[BaseScriptArguments, SFTConfig, ModelConfig]:
    """(script arguments, SFTConfig, ModelConfig) from `argv` (default: sys.argv[1:]), `--config` YAML included."""
    script_args, training_args, model_args = parse_configs(make_base_parser(prog), argv)
    _validate(script_args, training_args, model_args)
    return script_args, training_args, model_args


def train_base(
    script_args: BaseScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTTrainer:
    """Train, save the Hub-shaped folder to `training_args.output_dir` and push it if asked.

    Returns the trainer: `trainer.model` is the trained model, `trainer.state` its log.
    """
    model_args = model_args or ModelConfig()
    _validate(script_args, training_args, model_args)
    tokenizer = build_crystal_tokenizer()
    tokenizer.model_max_length = MAX_POSITION_EMBEDDINGS
    set_seed(training_args.seed)
    overrides = dict(script_args.model_overrides)
    if model_args.attn_implementation:
        overrides.setdefault("attn_implementation", model_args.attn_implementation)
    if model_args.model_name_or_path:
        source, revision = resolve(model_args.model_name_or_path, model_args.model_revision)
        model = LlamaForCausalLM.from_pretrained(source, revision=revision, **overrides)
        if model.config.vocab_size != len(tokenizer):
            raise TrainingConfigError(
                f"{model_args.model_name_or_path} has {model.config.vocab_size} token embeddings, the crystal "
                f"tokenizer {len(tokenizer)}: continue only a model that `train base` trained"
            )
    else:
        model = LlamaForCausalLM(llama_config(script_args.preset, tokenizer, **overrides))
    model.generation_config = generation_config(tokenizer)
    args = trainer_args(training_args)
    resume = resume_checkpoint(script_args, training_args)
    structures, properties = load_task_structures(script_args, seed=training_args.seed)
    record_format(model.config, script_args.crystal_format)
    mix = TaskMix(
        script_args.infill_fraction, tuple(script_args.conditions), format=script_args.crystal_format
    )
    epochs = epochs_to_draw(script_args, training_args, len(structures))
    train = task_dataset(structures, properties, mix, epochs=epochs, seed=training_args.seed)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    continued = model_args.model_name_or_path
    card_kwargs = {
        "preset": None if continued else script_args.preset,
        "n_parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "architecture": {
            k: getattr(model.config, k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
            )
        },
    }
    finish_run(
        trainer,
        script_args,
        training_args,
        "base",
        n_structures=len(structures),
        hyperparameters={
            **({"continued from": continued} if continued else {"preset": script_args.preset}),
            **script_args.model_overrides,
            **hyperparameters(script_args, training_args),
        },
        **card_kwargs,
    )
    return trainer


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """`hf-crystal train base` and training/train_base.py: parse `argv`, train; returns the output folder."""
    script_args, training_args, model_args = parse_args(argv, prog)
    train_base(script_args, training_args, model_args)
    return Path(training_args.output_dir)
