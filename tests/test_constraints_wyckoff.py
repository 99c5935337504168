"""Constrained decoding of Wyckoff text: every sample decodes, in the requested group, with the formula."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Composition
from transformers import pipeline

from hf_crystal.constraints import ConstraintError
from hf_crystal.constraints_wyckoff import WyckoffConstraint, WyckoffLogitsProcessor, _Rule, _vocabulary
from hf_crystal.testing import save_tiny_llama
from hf_crystal.text import decode
from hf_crystal.tokenization import build_crystal_tokenizer


def _walk(rule: _Rule, tokenizer, rng: np.random.Generator) -> str:
    """A random path through the automaton to EOS: what a model writes under the constraint."""
    state, ids = rule.grammar.start, []
    while state != ("done",):
        table = rule.table(state)
        assert table, f"dead end after {tokenizer.decode(ids)!r}"
        token = sorted(table)[rng.integers(len(table))]
        ids.append(token)
        state = table[token]
    assert ids[-1] == tokenizer.eos_token_id
    return tokenizer.decode(ids[:-1])


@pytest.mark.parametrize(
    "constraint",
    [
        WyckoffConstraint(spacegroup=225, composition={"Na": 2, "Cl": 2}),
        WyckoffConstraint(composition={"Sr": 1, "Ti": 1, "O": 3}),
        WyckoffConstraint(spacegroup=166, composition={"Bi": 2}),
        WyckoffConstraint(spacegroup=14, composition={"Zr": 4, "O": 8}),
        WyckoffConstraint(spacegroup=1, elements=("Ca", "O"), max_sites=5),
        WyckoffConstraint(max_sites=4),
    ],
    ids=["NaCl-225", "SrTiO3-any", "Bi-166", "ZrO2-14", "P1-elements", "free"],
)
def test_every_path_decodes_in_the_group_with_the_composition(constraint):
    tokenizer = build_crystal_tokenizer()
    rule = _Rule(constraint, _vocabulary(tokenizer))
    rng = np.random.default_rng(0)
    for _ in range(25):
        text = _walk(rule, tokenizer, rng)
        structure = decode(text, format="wyckoff")
        if constraint.spacegroup is not None:
            assert structure.properties["spacegroup"] == constraint.spacegroup
        if constraint.composition is not None:
            assert structure.composition == Composition(constraint.composition), text
        else:
            assert len(structure) <= constraint.max_sites
        if constraint.elements is not None:
            assert {el.symbol for el in structure.composition} <= set(constraint.elements)
        # A fixed position holds one orbit at most: no two orbits on one point.
        fixed = [line.split()[1] for line in text.splitlines()[2:] if len(line.split()) == 2]
        assert len(fixed) == len(set(fixed))


def test_impossible_requests_raise_before_generation():
    with pytest.raises(ConstraintError, match="no Wyckoff orbits of space group 227"):
        WyckoffConstraint(spacegroup=227, composition={"Na": 1, "Cl": 1})  # Fd-3m orbits hold >= 2 atoms
    with pytest.raises(ConstraintError, match="1-230"):
        WyckoffConstraint(spacegroup=231)


@pytest.fixture(scope="module")
def wyckoff_pipe(tmp_path_factory):
    """A random tiny model whose config says it writes Wyckoff text."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("random") / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "crystal_format": "wyckoff"}))
    return pipeline("crystal-generation", model=str(folder))


def test_random_model_meets_formula_and_space_group(wyckoff_pipe):
    samples = wyckoff_pipe({"formula": "NaCl", "spacegroup": 225}, num_return_sequences=6, seed=0)
    for sample in samples:
        assert sample["error"] is None and sample["spacegroup"] == 225
        assert sample["structure"].composition.reduced_formula == "NaCl"
        assert sample["text"].startswith("225\n")
    samples = wyckoff_pipe(
        {"formula": "SrTiO3", "formula_units": "cell"}, num_return_sequences=4, seed=1, max_sites=10
    )
    assert all(s["structure"].composition == Composition("SrTiO3") for s in samples)


def test_random_model_impossible_request_is_a_typed_error(wyckoff_pipe):
    with pytest.raises(ConstraintError, match="227"):
        wyckoff_pipe({"formula": "NaCl", "spacegroup": 227, "formula_units": "cell"})
    # With any number of formula units, the cells that fit are drawn (Na2Cl2 and up in Fd-3m).
    [sample] = wyckoff_pipe({"formula": "NaCl", "spacegroup": 227}, seed=0)
    assert sample["spacegroup"] == 227 and sample["structure"].composition.reduced_formula == "NaCl"


def test_processor_select_keeps_row_states():
    tokenizer = build_crystal_tokenizer()
    processor = WyckoffLogitsProcessor(tokenizer, WyckoffConstraint(spacegroup=221), prompt_length=0)
    ids = torch.tensor([tokenizer("22", add_special_tokens=False)["input_ids"]] * 2)
    scores = processor(ids, torch.zeros(2, len(tokenizer)))
    allowed = {tokenizer.decode([i]) for i in torch.isfinite(scores[0]).nonzero().flatten().tolist()}
    assert allowed == {"1"}
    assert processor.select([1])._history[0][0] == tuple(ids[1].tolist())
