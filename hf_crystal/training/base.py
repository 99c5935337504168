"""Train a small LLaMA-architecture crystal model from scratch (full fine-tuning with TRL's SFTTrainer).

The output folder is Hub-shaped: config.json, model.safetensors, generation_config.json, the crystal
tokenizer, README.md (model card); checkpoints go to its `checkpoints/` subfolder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import GenerationConfig, LlamaForCausalLM, TrainerCallback, set_seed
from trl import SFTTrainer

from hf_crystal.prompts import TaskMix
from hf_crystal.tokenization import build_crystal_tokenizer
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
from hf_crystal.training.presets import MAX_POSITION_EMBEDDINGS, MODEL_PRESETS, llama_config

__all__ = ["BaseTrainingConfig", "train_base"]

# A usual peak learning rate for a few-million-parameter transformer trained from scratch.
BASE_LEARNING_RATE = 1e-3
BASE_BATCH_SIZE = 16
# Gruver et al. 2024 sampling script defaults: temperature 0.9, top_p 0.9, 500 new tokens.
SAMPLING_TEMPERATURE = 0.9
SAMPLING_TOP_P = 0.9
MAX_NEW_TOKENS = 500


@dataclass
class BaseTrainingConfig(TrainingConfig):
    """`TrainingConfig` plus the model size: a preset name and optional `LlamaConfig` overrides."""

    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = BASE_LEARNING_RATE
    per_device_train_batch_size: int = BASE_BATCH_SIZE
    max_length: int | None = MAX_POSITION_EMBEDDINGS
    activation_checkpointing: bool | None = False

    def validate(self) -> None:
        super().validate()
        if self.preset not in MODEL_PRESETS:
            raise TrainingConfigError(f"unknown preset {self.preset!r}; choose one of {list(MODEL_PRESETS)}")

    def hyperparameters(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.model_overrides, **super().hyperparameters()}


def train_base(config: BaseTrainingConfig, callbacks: list[TrainerCallback] | None = None) -> SFTTrainer:
    """Train, save the Hub-shaped folder to `config.output_dir` and push it if asked.

    Returns the trainer: `trainer.model` is the trained model, `trainer.state` its log.
    """
    tokenizer = build_crystal_tokenizer()
    tokenizer.model_max_length = MAX_POSITION_EMBEDDINGS
    set_seed(config.seed)
    model = LlamaForCausalLM(llama_config(config.preset, tokenizer, **config.model_overrides))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=SAMPLING_TEMPERATURE,
        top_p=SAMPLING_TOP_P,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    args = sft_config(config)
    resume = resume_checkpoint(config)
    structures, properties = load_task_structures(config)
    mix = TaskMix(config.infill_fraction, tuple(config.conditions))
    train = task_dataset(
        structures, properties, mix, epochs=epochs_to_draw(config, args, len(structures)), seed=config.seed
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    card_kwargs = {
        "preset": config.preset,
        "n_parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "architecture": {
            k: getattr(model.config, k)
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        },
    }
    finish_run(trainer, config, "base", n_structures=len(structures), **card_kwargs)
    return trainer
