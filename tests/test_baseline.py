"""The random baseline (pyxtal): compositions kept exactly, space groups kept on request, seeded, failures
counted, sample ids kept; and the `baseline random` command."""

from __future__ import annotations

import pytest
from factories import rocksalt
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from hf_crystal.baseline import random_like
from hf_crystal.commands import main
from hf_crystal.structure_io import append_structures, read_structures


def samples() -> list[tuple[str, Structure]]:
    salt = rocksalt()
    return [
        ("salt-conventional", salt),  # Fm-3m, 8 atoms
        ("salt-primitive", salt.get_primitive_structure()),  # Fm-3m, 2 atoms: pyxtal needs the conventional 8
        (
            "perovskite",
            Structure(
                Lattice.cubic(3.9),
                ["Sr", "Ti", "O", "O", "O"],
                [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            ),
        ),
    ]


def test_compositions_kept_exactly_and_seeded():
    named = samples()
    first = random_like(named, seed=3)
    assert not first.failures
    assert [name for name, _ in first.structures] == [name for name, _ in named]
    for (_, built), (_, sample) in zip(first.structures, named, strict=True):
        assert built.composition == sample.composition and len(built) == len(sample)
    again = random_like(named, seed=3)
    other = random_like(named, seed=4)
    assert [s for _, s in again.structures] == [s for _, s in first.structures]
    assert [s for _, s in other.structures] != [s for _, s in first.structures]


def test_same_spacegroup_on_rock_salt():
    result = random_like(samples()[:2], same_spacegroup=True, seed=0)
    assert not result.failures and result.spacegroups == {"salt-conventional": 225, "salt-primitive": 225}
    for (_, built), (_, sample) in zip(result.structures, samples()[:2], strict=True):
        assert built.composition == sample.composition
        assert SpacegroupAnalyzer(built, symprec=0.1).get_space_group_number() == 225


def test_failures_are_counted_not_dropped(monkeypatch):
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = random_like([("disordered", disordered), ("salt", rocksalt())], attempts=2, seed=0)
    assert [name for name, _ in result.structures] == ["salt"]
    assert [name for name, _ in result.failures] == ["disordered"]
    assert result.failures[0][1].startswith("partial occupancies")
    # LLM samples: atoms closer than symprec get a space group at a finer tolerance; coinciding ones none.
    close = Structure(Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.01, 0, 0], [0.5, 0.5, 0.5]])
    same = Structure(Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0.5]])
    result = random_like([("close", close), ("same", same)], same_spacegroup=True, seed=0)
    assert [name for name, _ in result.structures] == ["close"]
    assert result.structures[0][1].composition == close.composition
    assert [name for name, _ in result.failures] == ["same"]
    assert result.failures[0][1].startswith("space group not found")
    # pyxtal giving up on every attempt: the sample is reported after exactly `attempts` tries.
    import hf_crystal.baseline as baseline

    calls = []
    monkeypatch.setattr(baseline, "_pyxtal", lambda *args: calls.append(args[0]))
    result = random_like([("salt", rocksalt())], same_spacegroup=True, attempts=3, seed=0)
    assert not result.structures and len(calls) == 3 and set(calls) == {225}
    assert result.failures == [("salt", "pyxtal built no Na4Cl4 in space group 225 in 3 attempts")]


def test_baseline_random_command(tmp_path, capsys):
    like = tmp_path / "samples.cif"
    append_structures(like, samples())
    out = tmp_path / "random.extxyz"
    argv = ["baseline", "random", "--like", str(like), "--out", str(out), "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 3 random structures" in capsys.readouterr().out
    ids, built, skipped = read_structures(out)
    assert ids == [name for name, _ in samples()] and not skipped
    assert [s.composition for s in built] == [s.composition for _, s in samples()]
    assert main(argv) == 2 and "exists" in capsys.readouterr().err
    cif = tmp_path / "same.cif"
    assert main([*argv[:4], "--out", str(cif), "--same-spacegroup", "--attempts", "1"]) == 0
    captured = capsys.readouterr()
    n_failed = int(captured.out.split("; ")[1].split()[0])
    assert len(read_structures(cif)[0]) + n_failed == 3
    assert captured.err.count("not built") == n_failed


@pytest.mark.parametrize("bad", [["--attempts", "0"], ["--out", "x.txt"]])
def test_baseline_random_usage_errors(tmp_path, bad, capsys):
    like = tmp_path / "samples.cif"
    append_structures(like, samples()[:1])
    argv = ["baseline", "random", "--like", str(like), "--out", str(tmp_path / "r.cif"), *bad]
    assert main(argv) == 2 and "error" in capsys.readouterr().err
