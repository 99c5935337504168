"""LoRA adapters for any causal LM (a Hub id or a local folder) with TRL's SFTTrainer and PEFT.

The output folder holds adapter_config.json, adapter_model.safetensors, the tokenizer and README.md;
`adapter_config.json` names the base by its Hub id (never a local path once pushed), so
`AutoPeftModelForCausalLM.from_pretrained(repo)` and transformers' `AutoModelForCausalLM.from_pretrained(repo)`
load base + adapter anywhere. Runs unchanged under `accelerate launch` (DDP, DeepSpeed, FSDP via `sft`
options in the config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback
from trl import SFTTrainer

from hf_crystal.prompts import TaskMix
from hf_crystal.training.common import (
    TrainingConfig,
    TrainingConfigError,
    epochs_to_draw,
    finish_run,
    load_task_structures,
    resume_checkpoint,
    sft_config,
    task_dataset,
)

__all__ = ["LoraTrainingConfig", "train_lora"]

# Gruver et al. 2024 (SPEC 3): LoRA r=8, alpha=32, dropout 0.05 on q_proj and v_proj; max length 2048.
LORA_R = 8
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
LORA_TARGET_MODULES = ("q_proj", "v_proj")
MAX_LENGTH = 2048
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


@dataclass
class LoraTrainingConfig(TrainingConfig):
    """`TrainingConfig` plus the base model and the LoRA settings.

    `model` is a Hub id or a local folder; `base_model_id` is the Hub id recorded in the adapter when
    `model` is a local folder (required to push). `tokenizer` defaults to the base's.
    """

    model: str | None = None
    revision: str | None = None
    base_model_id: str | None = None
    tokenizer: str | None = None
    lora_r: int = LORA_R
    lora_alpha: int = LORA_ALPHA
    lora_dropout: float = LORA_DROPOUT
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    max_length: int | None = MAX_LENGTH

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise TrainingConfigError("'model' is required: a Hub id or a local folder of a causal LM")
        if self.push_to_hub and self.base_hub_id is None:
            raise TrainingConfigError(
                f"model {self.model!r} is a local folder: give --base-model-id (its Hub id) so that the pushed "
                "adapter names a base others can load"
            )

    @property
    def base_hub_id(self) -> str | None:
        """The base's Hub id: `base_model_id`, or `model` when it is not a local folder."""
        return self.base_model_id or (None if Path(self.model).exists() else self.model)

    @property
    def own_tokenizer(self) -> bool:
        """Whether the adapter ships a tokenizer other than the base's."""
        return self.tokenizer is not None and self.tokenizer not in (self.model, self.base_hub_id)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )

    def hyperparameters(self) -> dict[str, Any]:
        lora = {
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": list(self.target_modules),
        }
        return {**lora, **super().hyperparameters()}


def train_lora(config: LoraTrainingConfig, callbacks: list[TrainerCallback] | None = None) -> SFTTrainer:
    """Train an adapter, save it to `config.output_dir` and push it if asked.

    Returns the trainer: `trainer.model` is the trained PEFT model, `trainer.state` its log.
    """
    init_kwargs = {"revision": config.revision} if config.revision else {}
    args = sft_config(config, model_init_kwargs=init_kwargs or None)
    resume = resume_checkpoint(config)
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer) if config.tokenizer else None
    structures, properties = load_task_structures(config)
    mix = TaskMix(config.infill_fraction, tuple(config.conditions))
    train = task_dataset(
        structures, properties, mix, epochs=epochs_to_draw(config, args, len(structures)), seed=config.seed
    )
    trainer = SFTTrainer(
        model=config.model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=config.lora_config(),
        callbacks=callbacks,
    )
    # PEFT records the path the base was loaded from; the adapter must name the base's Hub id.
    adapter_config = trainer.model.peft_config["default"]
    adapter_config.base_model_name_or_path = config.base_hub_id or str(Path(config.model).resolve())
    adapter_config.revision = config.revision
    trainer.train(resume_from_checkpoint=resume)
    finish_run(
        trainer,
        config,
        "adapter",
        n_structures=len(structures),
        base_model=config.base_hub_id,
        push_ignore=() if config.own_tokenizer else TOKENIZER_FILES,
        lora={
            k: v
            for k, v in config.hyperparameters().items()
            if k.startswith("lora_") or k == "target_modules"
        },
        completion_only_loss=config.completion_only_loss,
        own_tokenizer=config.own_tokenizer,
    )
    return trainer
