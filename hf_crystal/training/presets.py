"""Named sizes of the from-scratch LLaMA-architecture crystal model.

Parameter counts are for the crystal tokenizer's vocabulary (about 250 tokens, untied embeddings):
tiny ~0.9M (tests), small ~4.9M (a CPU run), base ~19M (a GPU run).
"""

from __future__ import annotations

from transformers import LlamaConfig, PreTrainedTokenizerBase

__all__ = ["MODEL_PRESETS", "llama_config"]

#: Context length of the from-scratch model: a 24-atom crystal with its prompt is about 500 tokens.
MAX_POSITION_EMBEDDINGS = 1024

MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 352},
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 688},
    "base": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 1376},
}


def llama_config(preset: str, tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamaConfig:
    """A `LlamaConfig` of a named size whose vocabulary and special-token ids match `tokenizer`."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {list(MODEL_PRESETS)}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **{**MODEL_PRESETS[preset], **overrides},
    )
