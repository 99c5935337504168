"""Task prompts: every condition subset, parsing back, whole-line infill masking, the task mix."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from factories import rocksalt, sodium_nitride, structures

from hf_crystal.prompts import (
    CONDITIONS,
    GENERATION_INSTRUCTION,
    MASK,
    TaskMix,
    format_formula,
    generation_example,
    generation_prompt,
    infill_example,
    mask_element,
    parse_conditions,
)
from hf_crystal.text import decode, encode

VALUES = {
    "formula": "Na4Cl4",
    "spacegroup": 225,
    "e_above_hull": 0.01234567,
    "formation_energy_per_atom": -2.5,
    "band_gap": 5.0,
}
SUBSETS = [c for k in range(len(VALUES) + 1) for c in itertools.combinations(VALUES, k)]


@pytest.mark.parametrize("keys", SUBSETS, ids=lambda keys: "+".join(keys) or "none")
def test_every_condition_subset_round_trips(keys):
    conditions = {k: VALUES[k] for k in keys}
    prompt = generation_prompt(conditions)
    assert prompt.endswith(GENERATION_INSTRUCTION + "\n")
    parsed = parse_conditions(prompt)
    assert list(parsed) == [k for k in CONDITIONS if k in keys]  # fixed order, whatever the dict order
    expected = {k: round(v, 4) if isinstance(v, float) else v for k, v in conditions.items()}
    assert parsed == expected


def test_prompt_text_is_the_papers():
    assert generation_prompt({"band_gap": 1.0, "formula": "NaCl", "spacegroup": 225}) == (
        "Below is a description of a bulk material. The chemical formula is Na1Cl1. The spacegroup number is 225. "
        "The band gap is 1.0.\n"
        "Generate a description of the lengths and angles of the lattice vectors and then the element type and "
        "coordinates for each atom within the lattice:\n"
    )
    assert (
        generation_prompt() == "Below is a description of a bulk material.\n" + GENERATION_INSTRUCTION + "\n"
    )


def test_condition_values_are_checked():
    with pytest.raises(ValueError, match="unknown conditions"):
        generation_prompt({"colour": "red"})
    for bad in (0, 231, 12.5, "P1"):
        with pytest.raises(ValueError, match="spacegroup"):
            generation_prompt({"spacegroup": bad})
    with pytest.raises(ValueError, match="formula"):
        generation_prompt({"formula": "Xx2"})
    with pytest.raises(ValueError, match="fractional"):
        format_formula("Fe0.5Ni0.5O")
    with pytest.raises(ValueError, match="not a generation prompt"):
        parse_conditions("Hello")


def test_none_conditions_are_left_out():
    assert generation_prompt({"band_gap": None}) == generation_prompt()


def test_negative_and_tiny_floats_parse_back():
    prompt = generation_prompt({"formation_energy_per_atom": -0.00004, "e_above_hull": -1.23456})
    assert parse_conditions(prompt) == {"e_above_hull": -1.2346, "formation_energy_per_atom": -0.0}


def test_generation_example_is_prompt_plus_crystal():
    example = generation_example(rocksalt(), {"formula": rocksalt().composition}, seed=0)
    assert parse_conditions(example["prompt"]) == {"formula": "Na4Cl4"}
    assert decode(example["completion"]).composition == rocksalt().composition


def test_masking_n_never_touches_na():
    text = encode(sodium_nitride())
    masked = mask_element(text, "N")
    lines = masked.splitlines()
    assert lines[2::2].count(MASK) == 1 and lines[2::2].count("Na") == 3
    assert mask_element(text, "Na").splitlines()[2::2].count(MASK) == 3
    with pytest.raises(ValueError, match="not in the structure"):
        mask_element(text, "Cl")


def test_infill_masks_every_site_of_one_element():
    structure = structures()["SrTiO3 3x3x3 (135 atoms)"]
    example = infill_example(structure, "O", seed=0)
    assert example["completion"] == "O"
    assert example["prompt"].count(MASK) == 81 + 2  # 81 O sites, plus the header and the instruction
    assert "\nO\n" not in example["prompt"]
    assert example["prompt"].endswith("Generate an element that could replace [MASK] in the bulk material:\n")
    # Unmasking gives back a parseable crystal with the original composition.
    body = example["prompt"].split("\n", 1)[1].rsplit("\n", 2)[0]
    assert decode(body.replace(MASK, "O")).composition == structure.composition


def test_infill_picks_a_random_element_when_none_given():
    elements = {infill_example(rocksalt(), seed=s)["completion"] for s in range(20)}
    assert elements == {"Na", "Cl"}


def test_task_mix_proportions_and_condition_subsets():
    mix = TaskMix()
    rng = np.random.default_rng(0)
    properties = {"spacegroup": 225, "band_gap": 5.0, "e_above_hull": float("nan")}
    tasks = [mix(rocksalt(), properties, seed=rng) for _ in range(600)]
    infill = sum(t["prompt"].startswith("Below is a partial") for t in tasks)
    assert abs(infill / 600 - 1 / 3) < 0.06
    subsets = Counter(
        tuple(parse_conditions(t["prompt"]))
        for t in tasks
        if not t["prompt"].startswith("Below is a partial")
    )
    # NaN properties are unavailable; formula, spacegroup and band_gap give 2^3 = 8 subsets.
    assert set(subsets) == {
        (),
        ("formula",),
        ("spacegroup",),
        ("band_gap",),
        ("formula", "spacegroup"),
        ("formula", "band_gap"),
        ("spacegroup", "band_gap"),
        ("formula", "spacegroup", "band_gap"),
    }
    # A fresh augmentation at every draw.
    completions = {t["completion"] for t in tasks if not t["prompt"].startswith("Below is a partial")}
    assert len(completions) > 300


def test_task_mix_options():
    only_generation = TaskMix(infill_fraction=0.0, conditions=("formula",))
    prompts = {only_generation(rocksalt(), {"band_gap": 1.0}, seed=s)["prompt"] for s in range(30)}
    assert {tuple(parse_conditions(p)) for p in prompts} == {(), ("formula",)}
    with pytest.raises(ValueError, match="infill_fraction"):
        TaskMix(infill_fraction=2)
    with pytest.raises(ValueError, match="unknown conditions"):
        TaskMix(conditions=("colour",))
