"""Crystal text codec: round trips, augmentation, and a decoder that only ever raises CrystalParseError."""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import structures
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from hf_crystal.text import (
    ELEMENT_SYMBOLS,
    CrystalParseError,
    DisorderedStructureError,
    decode,
    encode,
    try_decode,
)

STRUCTURES = structures()
# Half of the last written digit of each field.
LENGTH_TOL, ANGLE_TOL, FRAC_TOL = 0.05 + 1e-9, 0.5 + 1e-9, 0.005 + 1e-9


def periodic_frac_error(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b) % 1.0
    return float(np.minimum(d, 1 - d).max())


@pytest.mark.parametrize("name", STRUCTURES)
def test_round_trip_within_rounding(name):
    structure = STRUCTURES[name]
    back = decode(encode(structure))
    assert [s.specie.symbol for s in back] == [s.specie.symbol for s in structure]
    assert np.abs(np.subtract(back.lattice.abc, structure.lattice.abc)).max() <= LENGTH_TOL
    assert np.abs(np.subtract(back.lattice.angles, structure.lattice.angles)).max() <= ANGLE_TOL
    assert periodic_frac_error(back.frac_coords, structure.frac_coords) <= FRAC_TOL
    assert ((back.frac_coords >= 0) & (back.frac_coords < 1)).all()
    # Text is a fixed point after one trip.
    assert encode(back) == encode(structure)


def test_format_is_the_papers():
    text = encode(Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert text == "4.2 4.2 4.2\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


def test_coordinates_wrap_into_unit_interval():
    # 0.996 rounds to 1.00 and -0.001 to -0.00: both must be written 0.00.
    structure = Structure(Lattice.cubic(3), ["Fe", "Fe"], [[0.996, -0.001, 0.5], [0.25, 0.999, 1.0]])
    lines = encode(structure).splitlines()
    assert lines[3] == "0.00 0.00 0.50"
    assert lines[5] == "0.25 0.00 0.00"


def test_given_translation_shifts_and_wraps():
    structure = STRUCTURES["ZrO2 (monoclinic)"]
    shift = np.array([0.3, 0.75, 0.1])
    back = decode(encode(structure, translate=shift))
    assert periodic_frac_error(back.frac_coords, structure.frac_coords + shift) <= FRAC_TOL


def test_random_translation_is_seeded_and_preserves_distances():
    structure = STRUCTURES["CaAl silicate (triclinic)"]
    a, b = encode(structure, translate="random", seed=3), encode(structure, translate="random", seed=3)
    assert a == b
    assert a != encode(structure, translate="random", seed=4)
    # A common translation changes no interatomic distance (beyond rounding to 0.01 in fractions).
    original = decode(encode(structure))
    shifted = decode(a)
    assert np.abs(original.distance_matrix - shifted.distance_matrix).max() < 0.2


def test_generator_is_consumed_so_draws_differ():
    rng = np.random.default_rng(0)
    structure = STRUCTURES["NaCl (cubic, 8)"]
    assert encode(structure, translate="random", seed=rng) != encode(structure, translate="random", seed=rng)


def test_permutation_keeps_the_site_multiset():
    structure = STRUCTURES["SrTiO3 3x3x3 (135 atoms)"]
    text = encode(structure, permute=True, seed=1)
    assert text != encode(structure)
    site_lines = lambda t: sorted(zip(t.splitlines()[2::2], t.splitlines()[3::2], strict=True))  # noqa: E731
    assert site_lines(text) == site_lines(encode(structure))


def test_disordered_structure_is_refused():
    structure = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(DisorderedStructureError, match="partial occupancies"):
        encode(structure)


def test_bad_translate_argument():
    with pytest.raises(ValueError, match="translate"):
        encode(STRUCTURES["CsCl (cubic)"], translate="sideways")
    with pytest.raises(ValueError, match="3 components"):
        encode(STRUCTURES["CsCl (cubic)"], translate=[0.1, 0.2])


def test_decode_tolerates_what_models_write():
    text = "  5.0  5.0 5.0 \n\n90 90 90\nNa\n1.00 -0.25 0.5\n  Cl  \n0.5 0.5 0.5\n\n"
    structure = decode(text)
    assert [s.specie.symbol for s in structure] == ["Na", "Cl"]
    np.testing.assert_allclose(structure.frac_coords[0], [0.0, 0.75, 0.5])


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("5 5 5\n90 90 90\nLn\n0 0 0", 3, "unknown element symbol 'Ln'"),
        ("5 5 5\n90 90 90\n[MASK]\n0 0 0", 3, "unknown element"),
        ("5 5 5\n90 90 90\nNa\n0 0 zero", 4, "must be numbers"),
        ("5 5\n90 90 90\nNa\n0 0 0", 1, "expected 3 lattice lengths"),
        ("5 5 5\n90 90 90\nNa\n0 0 0\nCl", 5, "incomplete"),
        ("0 5 5\n90 90 90\nNa\n0 0 0", 1, "positive"),
        ("-1 5 5\n90 90 90\nNa\n0 0 0", 1, "positive"),
        ("5 5 5\n90 90 190\nNa\n0 0 0", 2, "between 0 and 180"),
        ("5 5 5\n10 10 170\nNa\n0 0 0", 2, "do not form a cell"),
        ("5 5 5\n120 120 120\nNa\n0 0 0", 2, "do not form a cell"),
        ("5 nan 5\n90 90 90\nNa\n0 0 0", 1, "finite"),
        ("1e300 1e300 1e300\n90 90 90\nNa\n0 0 0", 1, "must lie between"),
        ("1 1 1e-171\n1 1 1\nNa\n0 0 0", 1, "must lie between"),
        ("5 5 5\n90 90 90\nNa\n0 0 inf", 4, "finite"),
    ],
)
def test_decode_errors_name_line_and_reason(text, line, reason):
    with pytest.raises(CrystalParseError, match=reason) as info:
        decode(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}:")


def test_decode_errors_without_a_line():
    for text in ["", "5 5 5\n90 90 90", None]:
        with pytest.raises(CrystalParseError):
            decode(text)
    structure, error = try_decode("5 5 5\n90 90 90")
    assert structure is None and isinstance(error, CrystalParseError)
    structure, error = try_decode("5 5 5\n90 90 90\nNa\n0 0 0")
    assert error is None and len(structure) == 1


def test_element_vocabulary():
    assert len(ELEMENT_SYMBOLS) == 118 and ELEMENT_SYMBOLS[0] == "H" and ELEMENT_SYMBOLS[-1] == "Og"
    assert "D" not in ELEMENT_SYMBOLS


# --- fuzzing: whatever the input, decode gives a sound Structure or a CrystalParseError ---------


def assert_sound(text: str) -> None:
    try:
        structure = decode(text)
    except CrystalParseError:
        return
    assert np.isfinite(structure.lattice.matrix).all() and structure.volume > 0
    assert ((structure.frac_coords >= 0) & (structure.frac_coords < 1)).all()
    assert all(s.specie.symbol in ELEMENT_SYMBOLS for s in structure)


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-1000, 1000).map(str),
    st.sampled_from(["", "-", ".", "1e", "0x1", "1_0", "--1", "1.2.3", "NaN", "-inf", "1e-320", "9" * 400]),
)
number_line = st.lists(numbers, min_size=0, max_size=5).map(" ".join)
element_line = st.one_of(
    st.sampled_from(ELEMENT_SYMBOLS), st.sampled_from(["Ln", "X", "[MASK]", "na", "", " "])
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text(text):
    assert_sound(text)


@settings(max_examples=400, deadline=None)
@given(number_line, number_line, st.lists(st.tuples(element_line, number_line), max_size=4))
def test_fuzz_structured_text(lengths, angles, sites):
    assert_sound("\n".join([lengths, angles, *(x for site in sites for x in site)]))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(STRUCTURES)),
    st.lists(
        st.tuples(st.sampled_from(["delete", "duplicate", "replace", "spaces"]), st.integers(0, 400)),
        max_size=4,
    ),
    st.text(max_size=8),
)
def test_fuzz_mutated_valid_text(name, mutations, junk):
    lines = encode(STRUCTURES[name]).splitlines()
    for op, index in mutations:
        if not lines:
            break
        i = index % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "replace":
            lines[i] = junk
        else:
            lines[i] = "  " + lines[i].replace(" ", "   ") + " "
    assert_sound("\n".join(lines))


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.floats(min_value=-1, max_value=1e6, allow_nan=False), min_size=3, max_size=3),
    st.lists(st.floats(min_value=-10, max_value=370, allow_nan=False), min_size=3, max_size=3),
)
def test_every_lattice_triple_gives_a_cell_or_an_error(abc, angles):
    text = f"{abc[0]} {abc[1]} {abc[2]}\n{angles[0]} {angles[1]} {angles[2]}\nSi\n0.1 0.2 0.3"
    try:
        structure = decode(text)
    except CrystalParseError:
        return
    assert math.isfinite(structure.volume) and structure.volume > 0
    np.testing.assert_allclose(structure.lattice.abc, abc, rtol=1e-6)
