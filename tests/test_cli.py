"""The hf-crystal command: encode / decode round trip, help, and one-line errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from factories import structures
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from hf_crystal.commands import main
from hf_crystal.structure_io import read_structures, read_text_blocks
from hf_crystal.text import decode, encode

STRUCTURES = list(structures().values())[:4]


@pytest.fixture
def cif_folder(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, structure in enumerate(STRUCTURES):
        structure.to(filename=str(folder / f"s{i}.cif"))
    return folder


def test_encode_then_decode_gives_the_structures_back(tmp_path, cif_folder, capsys):
    text_file, cif_file = tmp_path / "crystals.txt", tmp_path / "back.cif"
    assert main(["encode", str(cif_folder), "--out", str(text_file)]) == 0
    blocks = read_text_blocks(text_file.read_text())
    assert [name for name, _ in blocks] == ["s0", "s1", "s2", "s3"]
    # CIF files group sites by element, so compare structures, not texts.
    assert all(
        StructureMatcher().fit(decode(body), s) for (_, body), s in zip(blocks, STRUCTURES, strict=True)
    )
    assert main(["decode", str(text_file), "--out", str(cif_file)]) == 0
    assert "decoded 4 of 4" in capsys.readouterr().err
    ids, back, skipped = read_structures(cif_file)
    assert ids == ["s0", "s1", "s2", "s3"] and not skipped
    assert [s.composition for s in back] == [s.composition for s in STRUCTURES]


def test_encode_augmentation_options(cif_folder, capsys):
    assert main(["encode", str(cif_folder / "s2.cif"), "--translate", "0.5,0,0"]) == 0
    shifted = read_text_blocks(capsys.readouterr().out)[0][1]
    assert shifted == encode(STRUCTURES[2], translate=[0.5, 0, 0])
    assert (
        main(["encode", str(cif_folder / "s2.cif"), "--translate", "random", "--permute", "--seed", "3"]) == 0
    )
    assert read_text_blocks(capsys.readouterr().out)[0][1] == encode(
        STRUCTURES[2], translate="random", permute=True, seed=3
    )


def test_decode_reports_bad_blocks_and_keeps_good_ones(tmp_path, capsys):
    text = tmp_path / "mixed.txt"
    text.write_text("# good\n" + encode(STRUCTURES[1]) + "\n\n# bad\n4 4 4\n90 90 90\nLn\n0 0 0\n")
    assert main(["decode", str(text), "--out", str(tmp_path / "out.cif")]) == 0
    err = capsys.readouterr().err
    assert "skipped block 2 (bad): line 3: unknown element symbol 'Ln'" in err and "decoded 1 of 2" in err
    assert len(Structure.from_file(tmp_path / "out.cif")) == len(STRUCTURES[1])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["decode", "missing.txt", "--out", "x.cif"], "No such file"),
        (["encode", "missing.cif"], "does not exist"),
        (["dataset", "build", "--out", "o"], "give either one SOURCE"),
        (["encode", "notes.dat"], "cannot read structures"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.dat").write_text("hello")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-crystal: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_option_values_are_argparse_errors(capsys):
    for argv in (
        ["encode", "x.cif", "--translate", "1,2"],
        ["dataset", "build", "x", "--out", "o", "--split-fractions", "a"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "three comma-separated" in capsys.readouterr().err


def test_help_of_every_command(capsys):
    for argv in (["dataset", "build"], ["encode"], ["decode"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--help"])
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: hf-crystal {' '.join(argv)}")


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hf_crystal.commands", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: hf-crystal")


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_model_that_is_neither_a_folder_nor_a_repo_id(tmp_path, capsys):
    out = tmp_path / "x.csv"
    assert main(["generate", "--model", "/nonexistent", "--num", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-crystal: error: no folder /nonexistent, and it is not a Hub repo id")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("flag", ["--num", "--batch-size", "--max-sites", "--refine-steps"])
def test_generate_refuses_non_positive_counts_before_anything_runs(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", flag, "-1", "--out", str(tmp_path / "x.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a positive whole number, got '-1'" in err
    assert "generating" not in err and not (tmp_path / "x.csv").exists()
