"""Constrained decoding of Wyckoff text: every sample decodes, in the requested group, with the formula."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Composition
from transformers import pipeline

from hf_crystal.constraints import ConstraintError
from hf_crystal.constraints_wyckoff import WyckoffConstraint, WyckoffLogitsProcessor, _Rule, _vocabulary
from hf_crystal.symmetry import space_group
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
        WyckoffConstraint(spacegroup=225, composition={"Na": 1, "Cl": 1}),
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
    # Two Tl and two Sb on the four fixed positions of F-43m make Fd-3m or Fm-3m crystals, never F-43m (zincblende
    # has one of each).
    with pytest.raises(ConstraintError, match="larger groups only"):
        WyckoffConstraint(spacegroup=216, composition={"Tl": 2, "Sb": 2})
    assert WyckoffConstraint(spacegroup=216, composition={"Tl": 1, "Sb": 1}).groups == (216,)


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


def _allowed_after(text: str, **constraint) -> set[str]:
    """The tokens the processor allows after completion `text` (one row)."""
    tokenizer = build_crystal_tokenizer()
    processor = WyckoffLogitsProcessor(tokenizer, WyckoffConstraint(**constraint), prompt_length=0)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    scores = processor(ids, torch.zeros(1, len(tokenizer)))
    return {tokenizer.decode([i]) for i in torch.isfinite(scores[0]).nonzero().flatten().tolist()}


def test_spacing_blocks_the_last_values_that_put_atoms_too_close():
    # Pm-3m, a = 4 Å, Na on 1a (0,0,0), Cl on 6e (x,0,0): Cl is 4x Å from Na and 8|x - 0.5| Å from its own
    # image (-x,0,0); both >= 0.5 Å only for 0.13 <= x <= 0.43 or 0.57 <= x <= 0.87.
    head = "221\n4.0\nNa 1a\nCl 6e 0."
    assert _allowed_after(head) == set("12345678")
    assert _allowed_after(head + "1") == set("3456789")
    assert _allowed_after(head + "5") == set("789")
    assert _allowed_after(head + "8") == set("01234567")
    assert _allowed_after(head, min_distance=0) == set("0123456789")  # spacing off
    # A cell where no value keeps Cl 0.5 Å from Na: nothing is blocked, the grammar's choice stands.
    assert _allowed_after("221\n1.0\nNa 1a\nCl 6e 0.") == set("0123456789")


def test_spacing_blocks_fixed_positions_next_to_written_atoms():
    # Cl on 6e at x = 0.45 is 0.2 Å from 3d's (1/2,0,0); 3c (0,1/2,1/2) is far from every Cl.
    assert _allowed_after("221\n4.0\nCl 6e 0.45\nNa 3") == {"c"}
    assert _allowed_after("221\n4.0\nCl 6e 0.45\nNa 3", min_distance=0) == {"c", "d"}
    with pytest.raises(ConstraintError, match="min_distance"):
        WyckoffConstraint(min_distance=-1)


def _random_completion(head: str, rng: np.random.Generator, **constraint) -> str:
    """`head`, then tokens drawn uniformly among those the processor allows, to EOS: a model that places atoms
    at random."""
    tokenizer = build_crystal_tokenizer()
    processor = WyckoffLogitsProcessor(tokenizer, WyckoffConstraint(**constraint), prompt_length=0)
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    while True:
        scores = processor(torch.tensor([ids]), torch.zeros(1, len(tokenizer)))
        allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
        token = allowed[rng.integers(len(allowed))]
        if token == tokenizer.eos_token_id:
            return tokenizer.decode(ids)
        ids.append(token)


def test_random_coordinates_are_spaced():
    from hf_crystal.evaluation.validity import validity_flags

    def valid(min_distance):
        rng = np.random.default_rng(0)
        # No group requested: spacing alone (the walk writes group 123).
        request = {"composition": {"Sr": 2, "Ti": 2, "O": 6}, "min_distance": min_distance}
        texts = [_random_completion("123\n4.0 6.0\n", rng, **request) for _ in range(20)]
        return sum(validity_flags(decode(t, format="wyckoff"))["struct_valid"] for t in texts)

    assert valid(0.5) == 20
    assert valid(0) < 15  # without spacing, random coordinates often collide (7 of 20 valid at this seed)


def test_a_requested_group_is_kept_not_exceeded():
    """Orbits on (0,0,z) of R32 with 3 Ni + 2 S are always R-3m: only Ni on 9d or 9e can end in R32."""
    request = {"composition": {"Ni": 3, "S": 2}}
    assert _allowed_after("155\n5.0 15.1\nNi ", spacegroup=155, **request) == {"9"}
    assert _allowed_after("155\n5.0 15.1\nNi ", **request) == {"3", "6", "9"}  # no group requested
    # Without a composition, EOS waits for the group: Na on 4a of F-43m alone is fcc (Fm-3m).
    assert _allowed_after("216\n5.0\nNa 4a", spacegroup=216) == {"\n"}
    assert _allowed_after("216\n5.0\nNa 4a") == {"\n", "</s>"}

    def in_group(**constraint):
        rng = np.random.default_rng(0)
        texts = [_random_completion("155\n5.0 15.1\n", rng, **request, **constraint) for _ in range(20)]
        return sum(space_group(decode(t, format="wyckoff"), 0.1) == 155 for t in texts)

    assert in_group(spacegroup=155) == 20
    assert in_group() < 10  # 7 of 20 at this seed


MP20_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20" / "val.csv"


@pytest.mark.skipif(not MP20_VAL.exists(), reason=f"MP-20 val ({MP20_VAL}) is absent")
def test_real_crystals_are_reachable_in_their_own_group():
    """The refusal of requests whose orbits make larger groups only never refuses a real crystal's own group and
    primitive composition (the crystal is a witness): the first 200 of MP-20 val."""
    import pandas as pd
    from pymatgen.core import Structure

    from hf_crystal.constraints_geometry import group_reachable
    from hf_crystal.text import encode

    refused = []
    for cif in pd.read_csv(MP20_VAL, nrows=200).cif:
        crystal = decode(encode(Structure.from_str(cif, fmt="cif"), format="wyckoff"), format="wyckoff")
        counts = tuple(sorted((el.symbol, int(n)) for el, n in crystal.composition.items()))
        if not group_reachable(crystal.properties["spacegroup"], counts):
            refused.append((crystal.properties["spacegroup"], counts))
    assert not refused


def test_pipeline_passes_min_distance(wyckoff_pipe, tmp_path):
    assert wyckoff_pipe.preprocess({"spacegroup": 221}, min_distance=0.8)["constraint"].min_distance == 0.8
    assert wyckoff_pipe.preprocess({"spacegroup": 221})["constraint"].min_distance == 0.5
    xyz = pipeline("crystal-generation", model=str(save_tiny_llama(tmp_path / "xyz")))
    with pytest.raises(ValueError, match="Wyckoff text"):
        xyz({}, min_distance=0.8)
