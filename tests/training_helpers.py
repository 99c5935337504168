"""Tiny models, tokenizers and crystal datasets for the tests, built in the test itself (no downloads)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pandas as pd
from factories import structures
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_crystal.data import build_dataset, save_dataset
from hf_crystal.prompts import generation_prompt
from hf_crystal.text import ELEMENT_SYMBOLS
from hf_crystal.tokenization import build_crystal_tokenizer

#: Small enough for a few CPU steps in a second: about 40k parameters with the crystal vocabulary.
TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_llama(out: Path, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """A randomly initialized tiny LLaMA with `tokenizer` (default: the crystal one), saved Hub-shaped to `out`."""
    import torch

    torch.manual_seed(seed)
    tokenizer = tokenizer or build_crystal_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def crystal_dataset(out: Path) -> Path:
    """A dataset folder (as `hf-crystal dataset build` writes it) of the small factory structures with properties."""
    rng = np.random.default_rng(0)
    small = {name: s for name, s in structures().items() if len(s) <= 16}
    frame = pd.DataFrame(
        {
            "material_id": [f"test-{i}" for i in range(len(small))],
            "cif": [s.to(fmt="cif") for s in small.values()],
            "band_gap": rng.uniform(0, 5, len(small)).round(3),
            "formation_energy_per_atom": rng.uniform(-3, 0, len(small)).round(3),
            "e_above_hull": rng.uniform(0, 0.2, len(small)).round(3),
        }
    )
    csv = out.parent / f"{out.name}.csv"
    frame.to_csv(csv)
    dataset, _ = build_dataset(csv, split_fractions=(1.0, 0.0, 0.0))
    return save_dataset(dataset, out)


def _corpus(rng):
    texts = []
    for _ in range(300):
        lines = [
            " ".join(f"{x:.1f}" for x in rng.uniform(2, 15, 3)),
            " ".join(map(str, rng.integers(60, 121, 3))),
        ]
        for symbol in rng.choice(ELEMENT_SYMBOLS[:94], int(rng.integers(1, 9))):
            lines += [str(symbol), " ".join(f"{x:.2f}" for x in rng.random(3))]
        texts.append(generation_prompt({"formula": "Na1Cl1"}) + "\n".join(lines))
    return texts


def llama_style_tokenizer():
    """A BPE like LLaMA's: Metaspace ("▁"), digits split, <0xNN> byte-fallback tokens, a Strip decoder.

    Trained on crystal texts and prompts, so that merged tokens such as "\\nNa\\n" exist.
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=list(string.printable),
    )
    backend.train_from_iterator(_corpus(np.random.default_rng(0)), trainer)
    spec = json.loads(backend.to_str())
    for byte in range(256):
        spec["model"]["vocab"].setdefault(f"<0x{byte:02X}>", len(spec["model"]["vocab"]))
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
