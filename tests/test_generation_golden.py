"""Golden texts: greedy (temperature 0) generation of seeded tiny models, pinned.

A speed change to generation (pipeline, constraint processor, generate arguments, attention, cache) must not
change what greedy decoding writes. The expected texts in golden_generation.json were written by the code
before the generation speed work, and rewritten once since, when constrained decoding began to forbid
two sites on the same coordinates (every text that changed then had a repeated site, none has one now);
regenerate them only for a change that is meant to alter outputs:

    python tests/test_generation_golden.py   # rewrites tests/golden_generation.json

Cases: unconstrained and constrained (formula, element set, max_sites), at batch 1 and as one left-padded
batch of prompts of different lengths, with our crystal tokenizer and a
LLaMA-style BPE (merged multi-character tokens), and with the committed small MP-20 model when present
(a trained model ends rows at different steps: ragged finishing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal.testing import llama_style_tokenizer, tiny_llama
from hf_crystal.tokenization import build_crystal_tokenizer

GOLDEN = Path(__file__).with_name("golden_generation.json")
SMALL_MODEL = Path(__file__).resolve().parents[1] / "models" / "crystal-llm-mp20-small"

# Prompts of different lengths (left padding in a batch).
CONDITIONS = [
    {"formula": "NaCl"},
    {},
    {"formula": "Li2O", "spacegroup": 225, "band_gap": 1.5},
    {"spacegroup": 12},
    {"formula": "Ba2TiO4", "e_above_hull": 0.0, "formation_energy_per_atom": -2.1},
]
FORMULAS = [
    {"formula": "NaCl"},
    {"formula": "Li2O", "spacegroup": 225, "band_gap": 1.5},
    {"formula": "Na3N"},
    {"formula": "Ba2TiO4", "e_above_hull": 0.0, "formation_energy_per_atom": -2.1},
]

# name -> (model, conditions, call kwargs); every case is greedy.
CASES = {
    "free/b1": ("tiny", CONDITIONS, {"constrain": False, "max_new_tokens": 40, "batch_size": 1}),
    "free/b5": ("tiny", CONDITIONS, {"constrain": False, "max_new_tokens": 40, "batch_size": 5}),
    "formula/b1": ("tiny", FORMULAS, {"batch_size": 1}),
    "formula/b4": ("tiny", FORMULAS, {"batch_size": 4}),
    "sites/b5": ("tiny", CONDITIONS, {"max_sites": 8, "batch_size": 5}),
    "elements/b3": (
        "tiny",
        [{}, {"spacegroup": 12}, {"spacegroup": 225, "band_gap": 1.5}],
        {"elements": ["Li", "O", "Fe"], "max_sites": 2, "batch_size": 3},
    ),
    "bpe/formula/b4": ("bpe", FORMULAS, {"batch_size": 4}),
    "bpe/free/b5": ("bpe", CONDITIONS, {"constrain": False, "max_new_tokens": 30, "batch_size": 5}),
    "small/free/b1": ("small", CONDITIONS[:3], {"constrain": False, "max_new_tokens": 160, "batch_size": 1}),
    "small/free/b3": ("small", CONDITIONS[:3], {"constrain": False, "max_new_tokens": 160, "batch_size": 3}),
    "small/formula/b1": ("small", FORMULAS[:3], {"batch_size": 1}),
    "small/formula/b3": ("small", FORMULAS[:3], {"batch_size": 3}),
}


def _pipe(kind: str):
    if kind == "small":
        if not SMALL_MODEL.exists():
            return None
        return pipeline("crystal-generation", model=str(SMALL_MODEL))
    tokenizer = build_crystal_tokenizer() if kind == "tiny" else llama_style_tokenizer()
    return pipeline("crystal-generation", model=tiny_llama(tokenizer, seed=0), tokenizer=tokenizer)


def generate_case(pipe, conditions, kwargs) -> list[list[str]]:
    # Formulas as the whole cells they state (the default, "any", would choose a number of formula units).
    out = pipe(conditions, temperature=0, formula_units="cell", **kwargs)
    return [[s["text"] for s in (group if isinstance(group, list) else [group])] for group in out]


@pytest.fixture(scope="module")
def pipes():
    return {kind: _pipe(kind) for kind in ("tiny", "bpe", "small")}


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_text_is_pinned(pipes, golden, name):
    kind, conditions, kwargs = CASES[name]
    if pipes[kind] is None:
        pytest.skip(f"{SMALL_MODEL} is not present")
    assert generate_case(pipes[kind], conditions, kwargs) == golden[name]


def test_golden_cases_are_not_trivial(golden):
    """The pins exercise what they claim: constrained texts decode, rows finish at different lengths."""
    from hf_crystal.text import try_decode

    for name, groups in golden.items():
        texts = [t for group in groups for t in group]
        if "free" not in name:
            assert all(try_decode(t)[0] is not None for t in texts), name
        if not name.startswith("elements"):  # the random model writes the same text for each prompt there
            assert len(set(texts)) > 1, name
    for text in golden["elements/b3"][0]:
        structure = try_decode(text)[0]
        assert len(structure) <= 2 and {el.symbol for el in structure.composition} <= {"Li", "O", "Fe"}
    assert len({len(t) for group in golden["small/free/b3"] for t in group}) > 1


if __name__ == "__main__":
    torch.set_num_threads(1)
    pipes = {kind: _pipe(kind) for kind in ("tiny", "bpe", "small")}
    if pipes["small"] is None:
        sys.exit(f"{SMALL_MODEL} is needed to write every golden case")
    results = {name: generate_case(pipes[kind], conds, kw) for name, (kind, conds, kw) in CASES.items()}
    GOLDEN.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {len(results)} cases to {GOLDEN}")
