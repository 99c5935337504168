"""Wyckoff text codec: round trips with the space group kept, one setting (origin choice 2), canonical text,
augmentation, no merging of atoms, and a decoder that only ever raises CrystalParseError."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from factories import rocksalt
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from hf_crystal.text import CrystalParseError, decode, encode, try_decode
from hf_crystal.text_wyckoff import TWO_ORIGIN_GROUPS, parse, space_group_table
from hf_crystal.tokenization import build_crystal_tokenizer


@functools.cache
def _structures() -> dict[str, Structure]:
    """Structures of the crystal systems and settings the format must get right (pymatgen-built)."""
    return {
        "rock salt": rocksalt(),
        "perovskite": Structure(
            Lattice.cubic(3.905),
            ["Sr", "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),
        "wurtzite (hexagonal)": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
        ),
        "Bi (R-3m)": Structure.from_spacegroup(
            "R-3m", Lattice.hexagonal(4.54, 11.86), ["Bi"], [[0, 0, 0.2339]]
        ),
        "ZrO2 (monoclinic)": Structure.from_spacegroup(
            "P2_1/c",
            Lattice.monoclinic(5.15, 5.21, 5.31, 99.2),
            ["Zr", "O", "O"],
            [[0.2754, 0.0395, 0.2083], [0.0700, 0.3317, 0.3447], [0.4496, 0.7569, 0.4792]],
        ),
        # pymatgen's "Fd-3m" is origin choice 1: Mg at 0,0,0, O at x = 0.3875 there (0.2625 in choice 2).
        "spinel (Fd-3m)": Structure.from_spacegroup(
            "Fd-3m", Lattice.cubic(8.08), ["Mg", "Al", "O"], [[0, 0, 0], [5 / 8] * 3, [0.3875] * 3]
        ),
    }


STRUCTURES = list(_structures())
MATCHER = StructureMatcher(stol=0.1)


def _moved(structure: Structure, seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(structure))
    coords = structure.frac_coords[order] + rng.random(3)
    return Structure(structure.lattice, [structure[i].specie for i in order], coords)


@pytest.mark.parametrize("name", STRUCTURES)
def test_round_trip_keeps_structure_and_space_group(name):
    structure = _structures()[name]
    text = encode(structure, format="wyckoff")
    back = decode(text, format="wyckoff")
    number = SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
    assert text.splitlines()[0] == str(number)
    assert MATCHER.fit(structure, back)
    assert SpacegroupAnalyzer(back, symprec=0.01).get_space_group_number() == number
    # The primitive cell: as many atoms as the primitive cell of the original.
    assert len(back) == len(structure.get_primitive_structure())
    assert back.properties["spacegroup"] == number
    assert encode(back, format="wyckoff") == text  # text is a fixed point after one trip


@pytest.mark.parametrize("name", STRUCTURES)
def test_canonical_text_ignores_permutation_and_translation(name):
    structure = _structures()[name]
    text = encode(structure, format="wyckoff")
    for seed in range(3):
        assert encode(_moved(structure, seed), format="wyckoff") == text


def test_texts_are_the_expected_ones():
    texts = {name: encode(_structures()[name], format="wyckoff") for name in STRUCTURES}
    assert texts["rock salt"] == "225\n5.6\nNa 4a\nCl 4b"
    assert texts["perovskite"] == "221\n3.9\nTi 1a\nSr 1b\nO 3d"
    # Hexagonal: a and c only; the polar z of the first orbit is pinned to 0.
    assert texts["wurtzite (hexagonal)"] == "186\n3.2 5.2\nO 2b 0.00\nZn 2b 0.62"
    # Hexagonal axes for R groups: the conventional 6c orbit, z only.
    assert texts["Bi (R-3m)"] == "166\n4.5 11.9\nBi 6c 0.23"
    # Monoclinic: a b c beta, then x y z of each general position.
    lines = texts["ZrO2 (monoclinic)"].splitlines()
    assert lines[:2] == ["14", "5.1 5.2 5.3 99"] and [line.split()[1] for line in lines[2:]] == ["4e"] * 3
    # Origin choice 2: spinel's oxygen at x = 0.26 (0.39 in choice 1).
    assert texts["spinel (Fd-3m)"] == "227\n8.1\nMg 8a\nAl 16d\nO 32e 0.26"


def test_two_origin_groups_are_written_in_choice_2():
    assert len(TWO_ORIGIN_GROUPS) == 24
    # spglib's Hall numbers of origin choice 2 (its default for these groups is choice 1).
    assert space_group_table(227).hall_number == 526 and space_group_table(141).hall_number == 427
    sites = parse("227\n5.4\nSi 8a").orbits[0].position.sites(())
    np.testing.assert_allclose(sites[0], [1 / 8, 1 / 8, 1 / 8])


def test_augmentation_draws_origin_and_representative_and_stays_the_same_crystal():
    structure = _structures()["ZrO2 (monoclinic)"]
    texts = {encode(structure, format="wyckoff", translate="random", seed=seed) for seed in range(6)}
    assert len(texts) > 1
    assert encode(structure, format="wyckoff", translate="random", seed=3) == encode(
        structure, format="wyckoff", translate="random", seed=3
    )
    for text in texts:
        assert MATCHER.fit(structure, decode(text, format="wyckoff"))
    # Rock salt: the origin may move to Cl (Na 4b, Cl 4a).
    salts = {encode(rocksalt(), format="wyckoff", translate="random", seed=s) for s in range(8)}
    assert salts == {"225\n5.6\nNa 4a\nCl 4b", "225\n5.6\nCl 4a\nNa 4b"}


def test_permute_shuffles_orbit_lines():
    structure = _structures()["spinel (Fd-3m)"]
    texts = {encode(structure, format="wyckoff", permute=True, seed=s) for s in range(8)}
    assert len(texts) > 1 and all(
        sorted(t.splitlines()[2:]) == sorted(next(iter(texts)).splitlines()[2:]) for t in texts
    )


def test_translate_vector_is_refused():
    with pytest.raises(ValueError, match="fixes the origin"):
        encode(rocksalt(), format="wyckoff", translate=[0.1, 0, 0])
    with pytest.raises(ValueError, match="unknown crystal format"):
        encode(rocksalt(), format="cif")


def test_p1_structure_keeps_every_atom_and_is_canonical():
    rng = np.random.default_rng(1)
    structure = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 81, 77, 103), ["Ca", "O", "O"], rng.random((3, 3))
    )
    text = encode(structure, format="wyckoff")
    lines = text.splitlines()
    assert lines[0] == "1" and len(lines[1].split()) == 6 and len(lines) == 5
    assert encode(_moved(structure, 4), format="wyckoff") == text
    assert MATCHER.fit(structure, decode(text, format="wyckoff"))


def test_decode_never_merges_atoms():
    # Two orbits on one fixed position: both kept (an invalid sample for the validity checks to see).
    doubled = decode("225\n5.6\nNa 4a\nCl 4a", format="wyckoff")
    assert len(doubled) == 2 and doubled.distance_matrix[0, 1] < 1e-8
    # A collapsed orbit: 6e (x,0,0) at x = 0 puts its 6 sites on one point.
    collapsed = decode("221\n4.0\nO 6e 0.00", format="wyckoff")
    assert len(collapsed) == 6 and collapsed.distance_matrix.max() < 1e-8
    assert collapsed.site_properties["wyckoff"] == ["6e"] * 6


def test_decode_returns_the_primitive_cell():
    structure = decode("229\n3.3\nW 2a", format="wyckoff")  # bcc
    assert len(structure) == 1 and structure.volume == pytest.approx(3.3**3 / 2)
    assert len(decode("166\n4.5 11.9\nBi 6c 0.23", format="wyckoff")) == 2


def test_decode_tolerates_spaces_blank_lines_and_wraps():
    structure = decode("  186 \n\n3.2   5.2\n Zn 2b 1.62  \nO 2b -1.0\n\n", format="wyckoff")
    assert sorted(structure.site_properties["wyckoff"]) == ["2b"] * 4
    assert ((structure.frac_coords >= 0) & (structure.frac_coords < 1)).all()


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("0\n5.6\nNa 4a", 1, "1-230"),
        ("231\n5.6\nNa 4a", 1, "1-230"),
        ("Fm-3m\n5.6\nNa 4a", 1, "space-group number"),
        ("225.0\n5.6\nNa 4a", 1, "space-group number"),
        ("225\n5.6 5.6\nNa 4a", 2, "takes 1 parameters"),
        ("14\n5.1 5.2 5.3\nO 4e 0.1 0.2 0.3", 2, "takes 4 parameters"),
        ("225\nnan\nNa 4a", 2, "finite"),
        ("225\n-5.6\nNa 4a", 2, "positive"),
        ("14\n5 5 5 190\nO 4e 0.1 0.2 0.3", 2, "between 0 and 180"),
        ("1\n5 5 5 10 10 170\nO 1a 0.1 0.2 0.3", 2, "do not form a cell"),
        ("225\n5.6\nLn 4a", 3, "unknown element"),
        ("225\n5.6\nNa 4z", 3, "has no Wyckoff position 'z'"),
        ("225\n5.6\nNa 8a", 3, "multiplicity 4, not 8"),
        ("225\n5.6\nNa a", 3, "not a Wyckoff label"),
        ("225\n5.6\nNa", 3, "an orbit line holds"),
        ("14\n5.1 5.2 5.3 99\nO 4e 0.1 0.2", 3, "3 free coordinate"),
        ("225\n5.6\nNa 4a 0.5", 3, "0 free coordinate"),
        ("14\n5.1 5.2 5.3 99\nO 4e 0.1 0.2 x", 3, "must be numbers"),
        ("14\n5.1 5.2 5.3 99\nO 4e 0.1 0.2 inf", 3, "finite"),
    ],
)
def test_decode_errors_name_line_and_reason(text, line, reason):
    with pytest.raises(CrystalParseError, match=reason) as info:
        decode(text, format="wyckoff")
    assert info.value.line == line


def test_decode_errors_without_a_line():
    for text in ["", "225\n5.6", None]:
        with pytest.raises(CrystalParseError):
            decode(text, format="wyckoff")
    structure, error = try_decode("225\n5.6", format="wyckoff")
    assert structure is None and isinstance(error, CrystalParseError)


_PIECES = [
    "225",
    "14",
    "1",
    "186",
    "\n",
    " ",
    "5.6",
    "0.25",
    "-1",
    "nan",
    "1e400",
    "Na",
    "O",
    "4a",
    "4e",
    "2b",
    "6e",
    "A",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14))
def test_decoder_raises_nothing_but_parse_errors(pieces):
    structure, error = try_decode("".join(pieces), format="wyckoff")
    assert (structure is None) != (error is None)


def test_tokens_and_tokenizer_round_trip():
    tokenizer = build_crystal_tokenizer()
    structure = _structures()["ZrO2 (monoclinic)"]
    wyckoff, xyz = encode(structure, format="wyckoff"), encode(structure)
    ids = tokenizer(wyckoff)["input_ids"]
    assert tokenizer.decode(ids) == wyckoff and tokenizer.unk_token_id not in ids
    assert len(ids) < 0.6 * len(tokenizer(xyz)["input_ids"])


def test_cli_encode_decode_with_format(tmp_path, capsys):
    from hf_crystal.commands import main
    from hf_crystal.structure_io import read_structures

    source = tmp_path / "in.cif"
    source.write_text(_structures()["spinel (Fd-3m)"].to(fmt="cif"))
    text_file, cif_file = tmp_path / "out.txt", tmp_path / "out.cif"
    assert main(["encode", str(source), "--format", "wyckoff", "--out", str(text_file)]) == 0
    assert "Mg 8a\nAl 16d\nO 32e 0.26" in text_file.read_text()
    assert main(["decode", str(text_file), "--format", "wyckoff", "--out", str(cif_file)]) == 0
    assert MATCHER.fit(read_structures(cif_file)[1][0], _structures()["spinel (Fd-3m)"])
    # An xyz decoder does not read Wyckoff text: the block is reported, not silently misread.
    assert main(["decode", str(text_file), "--out", str(cif_file)]) == 2
    assert "skipped block 1" in capsys.readouterr().err
    assert main(["encode", str(source), "--format", "wyckoff", "--translate", "0.5,0,0"]) == 2
    assert "fixes the origin" in capsys.readouterr().err
