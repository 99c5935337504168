"""LoRA adapters for any causal LM (a Hub id or a local folder) with TRL's SFTTrainer and PEFT.

Options: `LoraScriptArguments` (ours: data, task mix, card, the base's Hub id, the tokenizer),
`trl.SFTConfig` (every trainer flag) and `trl.ModelConfig` (the base: `--model_name_or_path`, alias
`--model`, `--model_revision`, `--dtype`, ...; LoRA: `--lora_r`, `--lora_alpha`, `--lora_dropout`,
`--lora_target_modules`, `--use_rslora`, ...; `--load_in_8bit`/`--load_in_4bit`), read by `parse_args`
through `trl.TrlParser`. The LoRA config is `trl.get_peft_config(model_args)` (`peft_config`). Defaults are Gruver et
al.'s: r=8, alpha=32, dropout 0.05 on q_proj and v_proj; lr 1e-4 cosine with 100 warmup
steps, 10 epochs, batch 1, max length 2048.

The output folder holds adapter_config.json, adapter_model.safetensors, the tokenizer and README.md;
`adapter_config.json` names the base by its Hub id (never a local path once pushed), so
`AutoPeftModelForCausalLM.from_pretrained(repo)` and transformers' `AutoModelForCausalLM.from_pretrained(repo)`
load base + adapter anywhere. Runs unchanged under `accelerate launch` (DDP, DeepSpeed, FSDP through
the SFTConfig options).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoTokenizer, TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config, get_quantization_config

from hf_crystal.crystal_format import format_of
from hf_crystal.prompts import TaskMix
from hf_crystal.training.common import (
    CrystalScriptArguments,
    TrainingConfigError,
    epochs_to_draw,
    finish_run,
    hyperparameters,
    load_task_structures,
    make_parser,
    parse_configs,
    resume_checkpoint,
    task_dataset,
    trainer_args,
    validate,
)

__all__ = [
    "LORA_DEFAULTS",
    "LoraScriptArguments",
    "base_hub_id",
    "main",
    "make_lora_parser",
    "parse_args",
    "peft_config",
    "train_lora",
]

#: Parser defaults of `train lora`, Gruver et al. 2024; see also `common.COMMON_DEFAULTS`.
LORA_DEFAULTS: dict[str, Any] = {
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "v_proj"],
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 1,
    "max_length": 2048,
}
# Files a tokenizer may write; pushed only when the adapter's tokenizer is not the base's.
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "vocab.*",
    "merges.txt",
    "spiece.model",
)
_LORA_CARD_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass
class LoraScriptArguments(CrystalScriptArguments):
    """`CrystalScriptArguments` plus the base's Hub id and the tokenizer (the base itself is `ModelConfig`'s)."""

    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the base when --model is a local folder (recorded in the adapter; required to push)"
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer to use instead of the base's (pushed with the adapter)"}
    )


def base_hub_id(script_args: LoraScriptArguments, model_args: ModelConfig) -> str | None:
    """The base's Hub id: `base_model_id`, or the model when it is not a local folder."""
    model = model_args.model_name_or_path
    return script_args.base_model_id or (None if model is None or Path(model).exists() else model)


def _own_tokenizer(script_args: LoraScriptArguments, model_args: ModelConfig) -> bool:
    """Whether the adapter ships a tokenizer other than the base's."""
    own = script_args.tokenizer
    return own is not None and own not in (
        model_args.model_name_or_path,
        base_hub_id(script_args, model_args),
    )


def peft_config(model_args: ModelConfig) -> LoraConfig:
    """`trl.get_peft_config(model_args)`, with one plain module name (`--lora_target_modules q_proj`) kept a name.

    ModelConfig turns a one-item list into a string (for `all-linear`), which PEFT reads as a regex over
    full module paths: `q_proj` alone would then match no module.
    """
    config = get_peft_config(model_args)
    if isinstance(config.target_modules, str) and re.fullmatch(r"\w+", config.target_modules):
        config.target_modules = {config.target_modules}
    return config


def make_lora_parser(prog: str | None = None) -> TrlParser:
    """The `TrlParser` of `train lora`: (LoraScriptArguments, SFTConfig, ModelConfig) with `LORA_DEFAULTS`.

    `--model` is an alias of ModelConfig's `--model_name_or_path`.
    """
    defaults = {**LORA_DEFAULTS, "gradient_checkpointing": torch.cuda.is_available()}
    parser = make_parser(
        LoraScriptArguments,
        defaults,
        prog=prog,
        description="Fine-tune a LoRA adapter on a causal LM with TRL SFTTrainer + PEFT; runs under "
        "`accelerate launch`.",
    )
    parser.add_argument("--model", dest="model_name_or_path", help="the base: Hub id or local folder")
    return parser


def _validate(script_args: LoraScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    validate(script_args, training_args)
    model = model_args.model_name_or_path
    if not model:
        raise TrainingConfigError(
            "the base is required: --model (YAML: model_name_or_path), a Hub id or a folder"
        )
    if not model_args.use_peft:
        raise TrainingConfigError(
            "train lora trains LoRA adapters: use_peft must stay true (train base: full training)"
        )
    if (model_args.load_in_8bit or model_args.load_in_4bit) and not torch.cuda.is_available():
        raise TrainingConfigError(
            "--load_in_8bit / --load_in_4bit quantize the base with bitsandbytes, which needs a CUDA GPU, and "
            "none is available here: drop the flag to train the base in full precision"
        )
    if training_args.push_to_hub and base_hub_id(script_args, model_args) is None:
        raise TrainingConfigError(
            f"model {model!r} is a local folder: give --base_model_id (its Hub id) so that the pushed adapter "
            "names a base others can load"
        )


def _base_format(script_args: LoraScriptArguments, model_args: ModelConfig) -> str:
    """The crystal format of the adapter: its base's `config.crystal_format` ("xyz" when absent).

    An adapter folder has no config of its own: the pipeline reads the format from the base's config, so an
    adapter is trained in the format of its base.
    """
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    base_format = format_of(config)
    if script_args.crystal_format not in (None, base_format):
        raise TrainingConfigError(
            f"the base {model_args.model_name_or_path} writes {base_format} text (config.crystal_format) and the "
            f"pipeline reads an adapter's format from its base: train the adapter in {base_format}, or a base "
            f"in {script_args.crystal_format} first (train base --crystal_format {script_args.crystal_format})"
        )
    return base_format


def parse_args(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[LoraScriptArguments, SFTConfig, ModelConfig]:
    """(script arguments, SFTConfig, ModelConfig) from `argv` (default: sys.argv[1:]), `--config` YAML included."""
    script_args, training_args, model_args = parse_configs(make_lora_parser(prog), argv)
    _validate(script_args, training_args, model_args)
    return script_args, training_args, model_args


def train_lora(
    script_args: LoraScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTTrainer:
    """Train an adapter, save it to `training_args.output_dir` and push it if asked.

    Returns the trainer: `trainer.model` is the trained PEFT model, `trainer.state` its log.
    """
    _validate(script_args, training_args, model_args)
    # As TRL's sft script: the base is loaded with ModelConfig's options, SFTConfig's model_init_kwargs on top.
    init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    init_kwargs = {k: v for k, v in init_kwargs.items() if v is not None}
    init_kwargs.update(training_args.model_init_kwargs or {})
    args = trainer_args(training_args, model_init_kwargs=init_kwargs)
    resume = resume_checkpoint(script_args, training_args)
    tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer) if script_args.tokenizer else None
    script_args.crystal_format = _base_format(script_args, model_args)
    structures, properties = load_task_structures(script_args, seed=training_args.seed)
    mix = TaskMix(
        script_args.infill_fraction, tuple(script_args.conditions), format=script_args.crystal_format
    )
    epochs = epochs_to_draw(script_args, training_args, len(structures))
    train = task_dataset(structures, properties, mix, epochs=epochs, seed=training_args.seed)
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=callbacks,
    )
    # PEFT records the path the base was loaded from; the adapter must name the base's Hub id.
    hub_id = base_hub_id(script_args, model_args)
    adapter_config = trainer.model.peft_config["default"]
    adapter_config.base_model_name_or_path = hub_id or str(Path(model_args.model_name_or_path).resolve())
    adapter_config.revision = None if model_args.model_revision == "main" else model_args.model_revision
    trainer.train(resume_from_checkpoint=resume)
    lora = {key: getattr(model_args, key) for key in _LORA_CARD_KEYS}
    own_tokenizer = _own_tokenizer(script_args, model_args)
    finish_run(
        trainer,
        script_args,
        training_args,
        "adapter",
        n_structures=len(structures),
        hyperparameters={**lora, **hyperparameters(script_args, training_args)},
        base_model=hub_id,
        push_ignore=() if own_tokenizer else TOKENIZER_FILES,
        lora=lora,
        completion_only_loss=training_args.completion_only_loss,
        own_tokenizer=own_tokenizer,
    )
    return trainer


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """`hf-crystal train lora` and training/train_lora.py: parse `argv`, train; returns the output folder."""
    script_args, training_args, model_args = parse_args(argv, prog)
    train_lora(script_args, training_args, model_args)
    return Path(training_args.output_dir)
