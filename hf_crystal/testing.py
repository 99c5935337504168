"""Tiny random models and test tokenizers for tests and benchmarks (as `transformers.testing_utils`).

Nothing here downloads: models are randomly initialised LLaMAs, tokenizers are built in memory.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_crystal.prompts import generation_prompt
from hf_crystal.text import ELEMENT_SYMBOLS
from hf_crystal.tokenization import build_crystal_tokenizer

__all__ = ["TINY_LLAMA", "crystal_corpus", "llama_style_tokenizer", "save_tiny_llama", "tiny_llama"]

#: About 40k parameters with the crystal vocabulary: a few CPU steps take well under a second.
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0, **overrides
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA (`TINY_LLAMA` sizes, `overrides` on top) matching `tokenizer`'s ids."""
    tokenizer = tokenizer or build_crystal_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_LLAMA, **overrides},
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(out: str | Path, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """`tiny_llama` saved Hub-shaped (config, safetensors, tokenizer) to `out`; returns `out`."""
    tokenizer = tokenizer or build_crystal_tokenizer()
    tiny_llama(tokenizer, seed).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def crystal_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """`n` random crystal texts (Gruver et al.'s format) after a formula prompt, for training test tokenizers."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        lines = [
            " ".join(f"{x:.1f}" for x in rng.uniform(2, 15, 3)),
            " ".join(map(str, rng.integers(60, 121, 3))),
        ]
        for symbol in rng.choice(ELEMENT_SYMBOLS[:94], int(rng.integers(1, 9))):
            lines += [str(symbol), " ".join(f"{x:.2f}" for x in rng.random(3))]
        texts.append(generation_prompt({"formula": "Na1Cl1"}) + "\n".join(lines))
    return texts


def llama_style_tokenizer(vocab_size: int = 0, seed: int = 0, bpe_size: int = 800) -> PreTrainedTokenizerFast:
    """A BPE like LLaMA's: Metaspace ("▁"), digits split, <0xNN> byte fallback, a Strip decoder.

    Trained on `crystal_corpus`, so that merged tokens such as "\\nNa\\n" exist. With `vocab_size`
    above the trained size, random strings of crystal characters pad the vocabulary: the encoder never
    produces them, but a model may sample them and a constraint must handle them.
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=list(string.printable),
    )
    backend.train_from_iterator(crystal_corpus(seed=seed), trainer)
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    extras = [f"<0x{byte:02X}>" for byte in range(256)]
    rng = np.random.default_rng(seed)
    pieces = [*string.ascii_letters, *string.digits, ".", "\n", "▁", *ELEMENT_SYMBOLS]
    while len(vocab) + len(extras) < vocab_size:
        extras.append("".join(rng.choice(pieces, int(rng.integers(2, 6)))))
    for token in extras:
        vocab.setdefault(token, len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
