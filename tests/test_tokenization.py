"""The crystal tokenizer: single tokens where constrained decoding needs them, lossless round trips."""

import string

import pytest
from factories import structures
from transformers import AutoTokenizer

from hf_crystal.prompts import CONDITIONS, TaskMix, generation_prompt, infill_example
from hf_crystal.text import ELEMENT_SYMBOLS, encode
from hf_crystal.tokenization import (
    SPECIAL_TOKENS,
    build_crystal_tokenizer,
    crystal_vocabulary,
)

PROPERTIES = {"spacegroup": 225, "e_above_hull": 0.0123, "formation_energy_per_atom": -1.5, "band_gap": 3.21}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tokenizer as a user gets it: saved, then loaded through AutoTokenizer."""
    folder = tmp_path_factory.mktemp("crystal-tokenizer")
    build_crystal_tokenizer().save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file()
    return AutoTokenizer.from_pretrained(folder)


def _texts():
    mix = TaskMix()
    for name, structure in structures().items():
        yield f"{name} canonical", encode(structure)
        yield f"{name} translated", encode(structure, translate="random", seed=1)
        for seed in range(4):
            task = mix(structure, PROPERTIES, seed=seed)
            yield f"{name} task {seed}", task["prompt"] + task["completion"]
        for element in sorted({site.specie.symbol for site in structure}):
            task = infill_example(structure, element, seed=0)
            yield f"{name} infill {element}", task["prompt"] + task["completion"]
    yield "all conditions", generation_prompt({"formula": "Na3N", **PROPERTIES})


def test_vocabulary_is_a_few_hundred_tokens_with_special_tokens(tokenizer):
    assert 200 <= len(tokenizer) <= 400
    assert len(crystal_vocabulary()) == len(set(crystal_vocabulary())) == len(tokenizer)
    for role, token in SPECIAL_TOKENS.items():
        assert getattr(tokenizer, role) == token
        assert getattr(tokenizer, f"{role}_id") is not None
    assert tokenizer.pad_token_id == 0
    assert tokenizer.mask_token == "[MASK]"


@pytest.mark.parametrize("piece", [*ELEMENT_SYMBOLS, *string.digits, ".", "-", " ", "\n", "[MASK]"])
def test_single_tokens(tokenizer, piece):
    ids = tokenizer.encode(piece, add_special_tokens=False)
    assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [piece]


def test_prompt_words_are_single_tokens(tokenizer):
    for sentence in CONDITIONS.values():
        for word in sentence.split():
            assert len(tokenizer.tokenize(word)) == 1, word


def test_numbers_are_split_into_digits(tokenizer):
    assert tokenizer.tokenize("12.05 -0.3") == ["1", "2", ".", "0", "5", " ", "-", "0", ".", "3"]
    assert tokenizer.tokenize("Na3N1") == ["Na", "3", "N", "1"]


def test_round_trip_of_every_prompt_and_crystal(tokenizer):
    for name, text in _texts():
        ids = tokenizer.encode(text)
        assert tokenizer.unk_token_id not in ids, name
        assert tokenizer.decode(ids) == text, name


def test_no_bos_is_added_and_skip_special_tokens_drops_eos(tokenizer):
    ids = tokenizer.encode("Na")
    assert ids == [tokenizer.convert_tokens_to_ids("Na")]
    assert tokenizer.decode([*ids, tokenizer.eos_token_id], skip_special_tokens=True) == "Na"


def test_unknown_characters_become_unk(tokenizer):
    assert tokenizer.tokenize("4.2 Å") == ["4", ".", "2", " ", "<unk>"]


def test_crystal_characters_are_single_tokens(tokenizer):
    pieces = [*ELEMENT_SYMBOLS, *string.digits, ".", "-", " ", "\n"]
    ids = [tokenizer.encode(piece, add_special_tokens=False) for piece in pieces]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(pieces)
