"""Sampling defaults of crystal language models: the one place they are written.

A model's own settings travel with it in its generation config (`generation_config.json`): the sampling
parameters, and two keys of ours that `pipeline("crystal-generation")` reads when a call does not set them,
`max_sites` (the largest cell the model was trained on, e.g. 20 for MP-20) and `refine_steps` (Euler steps of the
refiner it comes with). This module imports nothing heavy: the command line reads it at start-up.
"""

from __future__ import annotations

__all__ = ["MAX_NEW_TOKENS", "TEMPERATURE", "TOP_P", "generation_config", "model_setting"]

# Gruver et al. 2024 sampled with temperature and top_p 0.9 (their sampling script's defaults).
TEMPERATURE = 0.9
TOP_P = 0.9
# Unconstrained budget: 1024 new tokens hold about 55 sites with a one-character-per-digit tokenizer;
# constrained generation takes the constraint's own budget unless max_new_tokens is given.
MAX_NEW_TOKENS = 1024


def generation_config(tokenizer=None, **settings):
    """A `transformers.GenerationConfig` with our sampling defaults, the tokenizer's special tokens and
    `settings` (e.g. `max_sites=20`)."""
    from transformers import GenerationConfig

    tokens = {}
    if tokenizer is not None:
        tokens = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return GenerationConfig(
        **tokens,
        do_sample=True,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        max_new_tokens=MAX_NEW_TOKENS,
        **settings,
    )


def model_setting(model, key: str, default=None):
    """`key` of the model's generation config (`max_sites`, `refine_steps`), or `default` when it has none."""
    config = getattr(model, "generation_config", None)
    value = getattr(config, key, None)
    return default if value is None else value
