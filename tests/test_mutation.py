"""Mutation search on a tiny infill model with a fake relaxer and a hand-made hull (no CHGNet): the log,
the acceptance rules, resuming, the random baseline proposer and the `mutate` command."""

from __future__ import annotations

import csv
import json

import pytest
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the pipeline tasks)
from hf_crystal.commands import main
from hf_crystal.evaluation.relax import RelaxResult
from hf_crystal.evaluation.stability import HullReference
from hf_crystal.mutation import (
    COLUMNS,
    InfillProposer,
    MutationError,
    RandomProposer,
    SubstitutionTable,
    hull_elements,
    mutation_search,
    read_log,
    summarize,
)
from hf_crystal.structure_io import append_structures, read_structures
from hf_crystal.testing import save_tiny_llama

# Energy per atom each element contributes to a compound (elemental references sit at 0 eV/atom), so a
# compound's E_hull is the mean over its sites: an intermetallic hull without MP2020 corrections.
SITE_ENERGY = {"Li": -0.5, "Na": -0.1, "K": 0.3, "Rb": 0.2, "Cs": -0.3, "Mg": -0.4, "Ca": 0.1, "Sr": 0.0}
ELEMENTS = list(SITE_ENERGY)


class FakeRelaxer:
    """BatchedRelaxer's interface: returns each structure unchanged with the SITE_ENERGY total energy."""

    def __init__(self, **settings):
        self.settings = settings
        self.calls = 0
        self.relaxed = 0

    def relax(self, structures, *, progress=True, desc="relax"):
        self.calls += 1
        self.relaxed += len(structures)
        out = []
        for s in structures:
            energy = sum(SITE_ENERGY[site.specie.symbol] for site in s)
            out.append(RelaxResult(s.copy(), energy, energy, 1, True, len(s)))
        return out


def cscl(a: str, b: str) -> Structure:
    return Structure(Lattice.cubic(4.0), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


SEEDS = [("NaK", cscl("Na", "K")), ("CaSr", cscl("Ca", "Sr"))]  # E_hull 0.1 and 0.05 eV/atom


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def infill(tiny_model):
    return pipeline("crystal-infill", model=str(tiny_model))


@pytest.fixture
def hull():
    return HullReference([ComputedEntry(el, 0.0) for el in ELEMENTS], "hand-made elemental hull")


def _search(infill, hull, out, **options):
    relaxer = FakeRelaxer()
    options = {"rounds": 1, "population": 2, "children": 4, "seed": 0, "progress": False, **options}
    result = mutation_search(SEEDS, InfillProposer(infill), relaxer, hull, out, **options)
    return result, relaxer


def test_one_round_logs_every_candidate_and_accepts_only_improvements(infill, hull, tmp_path):
    out = tmp_path / "log.csv"
    result, relaxer = _search(infill, hull, out)
    rows = read_log(out)
    assert [r["id"] for r in rows] == [r["id"] for r in result.rows]
    with out.open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    seeds, candidates = rows[:2], rows[2:]
    assert [(r["round"], r["id"]) for r in seeds] == [(0, "NaK"), (0, "CaSr")]
    assert [r["e_hull"] for r in seeds] == pytest.approx([0.1, 0.05])
    assert len(candidates) == 8 and relaxer.relaxed == 10  # 2 parents x 4 children, plus the seeds
    for r in candidates:
        parent = next(s for s in seeds if s["id"] == r["parent_id"])
        assert r["proposer"] == "infill" and r["round"] == 1 and r["seed_id"] == parent["id"]
        assert r["masked_element"] in Composition(parent["formula"])
        assert r["replacement"] in ELEMENTS and r["replacement"] not in Composition(parent["formula"])
        assert 0 < r["score"] <= 1 and r["parent_e_hull"] == parent["e_hull"]
        expected = (SITE_ENERGY[r["replacement"]] - SITE_ENERGY[r["masked_element"]]) / 2 + parent["e_hull"]
        assert r["e_hull"] == pytest.approx(expected, abs=1e-9)
        assert r["accepted"] == (r["e_hull"] < r["parent_e_hull"])
        assert json.loads(r["relaxed_structure"])["@class"] == "Structure"
    assert {r["accepted"] for r in candidates} == {True, False}  # both fates occur
    # A parent never gets the same substitution twice, and the population is the best two.
    keys = [(r["parent_id"], r["masked_element"], r["replacement"]) for r in candidates]
    assert len(set(keys)) == len(keys)
    best = sorted([*seeds, *(r for r in candidates if r["accepted"])], key=lambda r: r["e_hull"])[:2]
    assert [m.id for m in result.population] == [r["id"] for r in best]
    stats = summarize(rows)
    assert stats["n_candidates"] == 8 and stats["n_failed"] == 0
    assert stats["n_below"] == sum(r["e_hull"] < 0.1 for r in candidates)


def test_reruns_refuse_to_overwrite_and_resume_after_an_interrupt(infill, hull, tmp_path):
    out = tmp_path / "log.csv"
    _search(infill, hull, out, rounds=2)
    complete = out.read_bytes()
    with pytest.raises(FileExistsError):
        _search(infill, hull, out, rounds=2)
    # Resuming a finished search relaxes nothing and writes nothing.
    result, relaxer = _search(infill, hull, out, rounds=2, resume=True)
    assert relaxer.calls == 0 and out.read_bytes() == complete and result.n_resumed == len(result.rows)
    # An interrupt in the middle of a row: the cut line is dropped, the rest is replayed and appended.
    lines = complete.split(b"\n")
    out.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:40])
    result, relaxer = _search(infill, hull, out, rounds=2, resume=True)
    assert out.read_bytes() == complete and result.n_resumed == 5
    assert relaxer.relaxed == len(result.rows) - 5
    # A log written by another search is refused.
    with pytest.raises(MutationError, match="does not match"):
        _search(infill, hull, out, rounds=2, resume=True, seed=1)


def test_acceptance_rules(infill, hull, tmp_path):
    rows = _search(infill, hull, tmp_path / "t.csv", accept="threshold", threshold=0.02)[0].rows
    assert all(r["accepted"] == (r["e_hull"] < 0.02) for r in rows if r["round"] == 1)
    rows = _search(infill, hull, tmp_path / "m.csv", accept="metropolis", temperature=1e-9)[0].rows
    assert all(r["accepted"] == (r["e_hull"] < r["parent_e_hull"]) for r in rows if r["round"] == 1)
    with pytest.raises(MutationError):
        _search(infill, hull, tmp_path / "x.csv", accept="greedy")


def test_random_proposer_samples_the_substitution_table(hull, tmp_path):
    table = SubstitutionTable()
    probs = table.probabilities(Composition("NaK"), "Na", ["Li", "Rb", "Cs", "Mg"])
    assert set(probs) == {"Li", "Rb", "Cs", "Mg"} and all(p > 0 for p in probs.values())
    assert table.probabilities(Composition("NaK"), "Og", ["Li"]) is None  # nothing known: uniform

    def run(seed):
        out = tmp_path / f"random{seed}-{len(list(tmp_path.iterdir()))}.csv"
        proposer = RandomProposer(table, seed=seed)
        mutation_search(SEEDS, proposer, FakeRelaxer(), hull, out, population=2, progress=False)
        return [(r["parent_id"], r["masked_element"], r["replacement"]) for r in read_log(out)[2:]]

    first = run(0)
    assert first == run(0) and len(first) == 2 * 2 * 4  # 2 rounds x 2 parents x 4 children
    assert first != run(1)
    assert all(r in ELEMENTS for _, _, r in first)


def test_infill_intersected_with_substitutions_stays_in_the_table(infill):
    table = SubstitutionTable()
    candidates = ["Li", "Rb", "Cs", "Mg", "Ca", "Sr", "He", "Ne"]
    allowed = table.allowed(table.probabilities(Composition("NaK"), "Na", candidates))
    proposals = InfillProposer(infill, table, intersect=True).propose(SEEDS[0][1], "Na", candidates, 8)
    assert {p.replacement for p in proposals} == set(allowed) and "He" not in allowed
    assert sum(p.score for p in proposals) == pytest.approx(1)
    assert all(p.substitution_probability > 0 for p in proposals)


def test_hull_elements(hull):
    assert hull_elements(hull) == ["Li", "Na", "Mg", "K", "Ca", "Rb", "Sr", "Cs"]


def test_mutate_command(tiny_model, tmp_path, monkeypatch, capsys):
    import hf_crystal.evaluation.relax as relax

    monkeypatch.setattr(relax, "BatchedRelaxer", FakeRelaxer)
    seeds = tmp_path / "seeds.cif"
    append_structures(seeds, SEEDS)
    hull_file = tmp_path / "hull.json"
    hull_file.write_text(json.dumps([ComputedEntry(el, 0.0).as_dict() for el in ELEMENTS]))
    out, found = tmp_path / "log.csv", tmp_path / "found.cif"
    argv = ["mutate", str(seeds), "--model", str(tiny_model), "--hull", str(hull_file), "--out", str(out)]
    argv += ["--rounds", "1", "--population", "2", "--children", "3", "--structures", str(found)]
    argv += ["--elements", ",".join(ELEMENTS), "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "user-supplied entries: hull.json" in captured.err
    assert "6 candidates (0 log rows resumed)" in captured.out
    rows = read_log(out)
    assert [r["id"] for r in rows[:2]] == ["NaK", "CaSr"] and len(rows) == 8
    assert read_structures(found)[0] == [r["id"] for r in rows if r["round"] == 1 and r["accepted"]]
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "6 candidates (8 log rows resumed)" in capsys.readouterr().out
    assert len(read_log(out)) == 8
    assert main(["mutate", str(seeds), "--out", str(tmp_path / "r.csv"), "--hull", str(hull_file)]) == 2
    assert "needs --model" in capsys.readouterr().err
    # Without --hull: the packaged hull (its loader's error when it is missing).
    import hf_crystal.evaluation.stability as stability

    def missing():
        raise stability.HullError("the shipped hull is missing")

    monkeypatch.setattr(stability, "shipped_hull", missing)
    no_hull = ["mutate", str(seeds), "--proposer", "random", "--out", str(tmp_path / "n.csv")]
    assert main(no_hull) == 2 and "the shipped hull is missing" in capsys.readouterr().err
    random_argv = ["mutate", str(seeds), "--proposer", "random", "--hull", str(hull_file), "--rounds", "1"]
    random_argv += ["--out", str(tmp_path / "r.csv"), "--elements", ",".join(ELEMENTS), "--no-progress"]
    assert main(random_argv) == 0
    assert {r["proposer"] for r in read_log(tmp_path / "r.csv")[2:]} == {"random"}
