"""Tiny models and crystal datasets for the training tests, built in the test itself (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from factories import structures
from transformers import LlamaConfig, LlamaForCausalLM

from hf_crystal.data import build_dataset, save_dataset
from hf_crystal.tokenization import build_crystal_tokenizer

#: Small enough for a few CPU steps in a second: about 40k parameters with the crystal vocabulary.
TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_llama(out: Path, seed: int = 0) -> Path:
    """A randomly initialized tiny LLaMA with the crystal tokenizer, saved Hub-shaped to `out`."""
    import torch

    torch.manual_seed(seed)
    tokenizer = build_crystal_tokenizer()
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
