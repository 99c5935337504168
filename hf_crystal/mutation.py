"""Mutation search (Gruver et al. 2024): mask an element, let a proposer pick replacements, relax, keep
what lowers the energy above the hull.

Each round, every member of the population (a parent) gets ``children`` candidates: for each candidate an
element of the parent is drawn at random (seeded) and masked, and the proposer names replacements for it:

- ``InfillProposer``: the ``crystal-infill`` pipeline ranks the open elements and the best ones are taken;
  with ``intersect=True`` only elements that pymatgen's data-mined substitution probabilities
  (``SubstitutionPredictor``, Hautier et al. 2011) allow for the masked element are ranked;
- ``RandomProposer`` (the baseline): replacements sampled from the same substitution probabilities
  (uniform over the open elements when the predictor knows nothing about the masked element).

Open elements are the elements the hull has a reference for (``hull_elements``; CHGNet covers H to Pu)
minus the parent's own elements (a replacement already in the structure would merge two species) and
minus replacements already tried for that parent and masked element. The substituted structures are
relaxed (any object with ``relax(structures, progress=, desc=) -> list[RelaxResult]``, e.g.
``BatchedRelaxer``), MP2020-corrected and placed against the hull. A candidate is accepted by the
acceptance rule (``ACCEPT_RULES``):

- ``improve``: its E_hull is below its parent's;
- ``threshold``: its E_hull is below ``threshold`` (eV/atom);
- ``metropolis``: always if lower than its parent's, else with probability exp(-dE_hull / temperature).

The next population is the best ``population`` (lowest E_hull) of the parents and the accepted candidates;
the first is the best ``population`` of the seeds (relaxed and placed on the hull the same way).

Every seed and candidate is one row of the CSV log (``COLUMNS``), appended and flushed as soon as its fate
is known; the relaxed structure is stored in the row (pymatgen JSON, one line). An existing log is never
overwritten: ``resume=True`` replays the search (seeded, so the same candidates come back in the same
order), takes the rows already in the file as they are (no relaxation) and appends the rest; a row that
does not match the replay (other seeds or options) stops the run.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Element, Structure

__all__ = [
    "ACCEPT_RULES",
    "COLUMNS",
    "InfillProposer",
    "Member",
    "MutationError",
    "MutationResult",
    "Proposal",
    "RandomProposer",
    "SubstitutionTable",
    "hull_elements",
    "mutation_search",
    "read_log",
    "summarize",
]

ACCEPT_RULES = ("improve", "threshold", "metropolis")
#: Elements CHGNet can relax (H to Pu); replacements are drawn from these.
MAX_Z = 94
COLUMNS = (
    "round",
    "id",
    "parent_id",
    "seed_id",
    "proposer",
    "masked_element",
    "replacement",
    "formula",
    "score",
    "substitution_probability",
    "relax_error",
    "converged",
    "steps",
    "energy_per_atom",
    "e_hull",
    "parent_e_hull",
    "accepted",
    "reason",
    "relaxed_structure",
)


class MutationError(ValueError):
    """A search that cannot run as asked (bad option, a log written by another search)."""


@dataclass
class Proposal:
    """A replacement for the masked element: the proposer's score (its probability, normalised over the
    open elements) and pymatgen's substitution probability (normalised the same way; None if unknown)."""

    replacement: str
    score: float
    substitution_probability: float | None


@dataclass
class Member:
    """A structure of the population: relaxed, with its E_hull (eV/atom)."""

    id: str
    seed_id: str
    structure: Structure
    e_hull: float
    order: int


@dataclass
class MutationResult:
    """Rows of the log in file order (this run's and resumed ones) and the final population."""

    rows: list[dict]
    population: list[Member]
    n_resumed: int


@lru_cache(maxsize=4096)
def _oxidation_states(formula: str) -> dict[str, float]:
    """The most likely oxidation state of each element of a reduced formula ({} if none is found)."""
    try:
        guesses = Composition(formula).oxi_state_guesses()
    except Exception:  # pymatgen raises on elements without known oxidation states
        return {}
    return dict(guesses[0]) if guesses else {}


class SubstitutionTable:
    """Element-level substitution probabilities from pymatgen's ``SubstitutionPredictor``.

    The predictor's table is over ionic species: p(Y | X) for the masked element X is the sum over Y's
    species of ``cond_prob(Y^q, X^p)``, averaged over X's species near its guessed oxidation state in
    the structure (all of X's species when no guess exists). Elements without species in the table get 0;
    ``probabilities`` returns None when X itself has none.
    """

    def __init__(self, predictor=None):
        if predictor is None:
            from pymatgen.analysis.structure_prediction.substitution_probability import (
                SubstitutionPredictor,
            )

            predictor = SubstitutionPredictor()
        self.predictor = predictor
        self.threshold = float(predictor.threshold)
        self._species = defaultdict(list)
        for species in sorted(predictor.p.species, key=str):
            self._species[species.symbol].append(species)

    def probabilities(
        self, composition: Composition, element: str, candidates: Sequence[str]
    ) -> dict[str, float] | None:
        """p(candidate | element) for each candidate (not normalised over them), or None if unknown."""
        own = self._species.get(element)
        if not own:
            return None
        oxidation = _oxidation_states(composition.reduced_formula).get(element)
        if oxidation is not None:
            own = [sp for sp in own if abs(sp.oxi_state - oxidation) < 1] or own
        table = self.predictor.p
        return {
            y: sum(table.cond_prob(s, x) for x in own for s in self._species.get(y, ())) / len(own)
            for y in candidates
        }

    def allowed(self, probabilities: dict[str, float]) -> list[str]:
        """The candidates whose probability reaches the predictor's threshold."""
        return [y for y, p in probabilities.items() if p >= self.threshold]


def _normalised(probabilities: dict[str, float] | None) -> dict[str, float]:
    if not probabilities:
        return {}
    total = sum(probabilities.values())
    return {k: v / total for k, v in probabilities.items()} if total > 0 else {}


class InfillProposer:
    """Replacements ranked by a ``crystal-infill`` pipeline (best first).

    Args:
        pipe: ``pipeline("crystal-infill", model=...)``.
        table: a ``SubstitutionTable``; its probabilities are recorded, and with ``intersect`` they filter.
        intersect: rank only elements the table allows (probability >= its threshold) for the masked
            element; all open elements when the table knows nothing about it.
    """

    name = "infill"

    def __init__(self, pipe, table: SubstitutionTable | None = None, intersect: bool = False):
        if intersect and table is None:
            raise MutationError("intersect=True needs a SubstitutionTable")
        self.pipe = pipe
        self.table = table
        self.intersect = intersect

    def propose(
        self, structure: Structure, element: str, candidates: Sequence[str], n: int
    ) -> list[Proposal]:
        raw = self.table.probabilities(structure.composition, element, candidates) if self.table else None
        pool = list(candidates)
        if self.intersect and raw is not None:
            pool = self.table.allowed(raw)
        if not pool or n < 1:
            return []
        substitution = _normalised({y: raw[y] for y in pool} if raw is not None else None)
        ranked = self.pipe(structure, mask_element=element, candidates=pool, num_candidates=n)["candidates"]
        return [Proposal(c["element"], c["probability"], substitution.get(c["element"])) for c in ranked]


class RandomProposer:
    """Replacements sampled (without replacement) from the substitution probabilities, or uniformly over
    the open elements when there are none for the masked element (or no table)."""

    name = "random"

    def __init__(self, table: SubstitutionTable | None = None, seed: int = 0):
        self.table = table
        self.rng = np.random.default_rng([seed, 2])

    def propose(
        self, structure: Structure, element: str, candidates: Sequence[str], n: int
    ) -> list[Proposal]:
        raw = self.table.probabilities(structure.composition, element, candidates) if self.table else None
        weights = _normalised(raw)
        if weights:
            pool = [y for y in candidates if weights[y] > 0]
            p = np.array([weights[y] for y in pool])
        else:
            pool = list(candidates)
            p = np.full(len(pool), 1.0 / len(pool)) if pool else np.zeros(0)
        k = min(n, len(pool))
        if k < 1:
            return []
        picks = self.rng.choice(len(pool), size=k, replace=False, p=p / p.sum())
        return [Proposal(pool[i], float(p[i]), weights.get(pool[i]) if weights else None) for i in picks]


def hull_elements(hull) -> list[str]:
    """Elements (Z <= 94) the hull has an elemental reference for, in order of Z."""
    from hf_crystal.evaluation.stability import HullError

    found = []
    for z in range(1, MAX_Z + 1):
        symbol = Element.from_Z(z).symbol
        try:
            hull.phase_diagram([symbol])
        except (HullError, ValueError):
            continue
        found.append(symbol)
    return found


def _e_hull(hull, result) -> tuple[float, str | None]:
    """(E_hull, None) of a relaxation result, or (NaN, why not)."""
    from hf_crystal.evaluation.stability import HullError, corrected_entries

    if result.error or result.structure is None or not np.isfinite(result.energy):
        return math.nan, f"relax failed: {result.error or 'no energy'}"
    entry = corrected_entries([result.structure], [result.energy])[0]
    if entry is None:
        return math.nan, "MP2020 compatibility rejected the entry"
    try:
        return float(hull.e_above_hull(entry)), None
    except (HullError, ValueError) as exc:
        return math.nan, f"no E_hull: {exc}"


def _accept(rule: str, e_hull: float, parent: float, u: float, threshold: float, temperature: float):
    delta = e_hull - parent
    if rule == "improve":
        ok = delta < 0
        return ok, f"E_hull {delta:+.4f} eV/atom vs parent" + ("" if ok else ": no improvement")
    if rule == "threshold":
        ok = e_hull < threshold
        return ok, f"E_hull {'below' if ok else 'not below'} {threshold:g} eV/atom"
    ok = delta < 0 or u < math.exp(-delta / temperature)
    return ok, f"E_hull {delta:+.4f} eV/atom vs parent: metropolis {'accepts' if ok else 'rejects'}"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


class _Log:
    """The CSV log: header once, one flushed line per row; on resume, complete rows read back."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.rows: dict[str, dict] = {}
        self.order: list[str] = []
        if path.exists() and not resume:
            raise FileExistsError(f"{path} exists: resume it or choose another output")
        if path.exists() and path.stat().st_size:
            self._read_back()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)
        self.handle = path.open("a", newline="")
        self.writer = csv.writer(self.handle)

    def _read_back(self) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a line cut by an interrupt: drop it (every row is one line)
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise MutationError(
                    f"{self.path} is not a mutation log (columns differ): choose another output"
                )
            for row in reader:
                self.rows[row["id"]] = row
                self.order.append(row["id"])

    def write(self, row: dict) -> None:
        self.writer.writerow([_fmt(row[c]) for c in COLUMNS])
        self.handle.flush()
        self.rows[row["id"]] = {c: _fmt(row[c]) for c in COLUMNS}
        self.order.append(row["id"])

    def close(self) -> None:
        self.handle.close()


def read_log(path: str | os.PathLike) -> list[dict]:
    """Rows of a mutation log with typed values (relaxed structures left as JSON text)."""
    with Path(path).open(newline="") as handle:
        return [_typed(row) for row in csv.DictReader(handle)]


def _typed(row: dict) -> dict:
    out = dict(row)
    out["round"] = int(row["round"])
    for key in ("score", "substitution_probability", "energy_per_atom", "e_hull", "parent_e_hull"):
        out[key] = _float(row[key])
    out["steps"] = int(row["steps"]) if row["steps"] else None
    out["converged"] = row["converged"] == "True" if row["converged"] else None
    out["accepted"] = row["accepted"] == "True"
    return out


def summarize(rows: Sequence[dict], threshold: float = 0.1) -> dict:
    """Counts over the candidates (round >= 1) of typed log rows: proposed, relaxed and placed on the
    hull, below ``threshold`` (and how many distinct formulas), accepted, best E_hull."""
    candidates = [r for r in rows if r["round"] >= 1]
    placed = [r for r in candidates if np.isfinite(r["e_hull"])]
    below = [r for r in placed if r["e_hull"] < threshold]
    return {
        "n_candidates": len(candidates),
        "n_with_e_hull": len(placed),
        "n_failed": len(candidates) - len(placed),
        "n_below": len(below),
        "n_unique_below": len({r["formula"] for r in below}),
        "n_accepted": sum(r["accepted"] for r in candidates),
        "best_e_hull": min((r["e_hull"] for r in placed), default=math.nan),
        "median_e_hull": float(np.median([r["e_hull"] for r in placed])) if placed else math.nan,
    }


@dataclass
class _Candidate:
    id: str
    round: int
    parent: Member | None
    seed_id: str
    masked: str
    proposal: Proposal | None
    structure: Structure
    order: int  # position in the search (seeds first, then round by round): breaks E_hull ties


def _select(members: Sequence[Member], size: int) -> list[Member]:
    return sorted(members, key=lambda m: (m.e_hull, m.order))[:size]


class _Search:
    """One mutation search's state: its proposer, relaxer, hull and log, the acceptance rule and the random
    streams (masked elements; acceptance draws), and the (parent, masked, replacement) triples already tried."""

    def __init__(
        self, proposer, relaxer, hull, log, accept, threshold, temperature, seed, chunk_size, progress
    ):
        self.proposer, self.relaxer, self.hull, self.log = proposer, relaxer, hull, log
        self.rule = (accept, threshold, temperature)
        self.chunk_size, self.progress = chunk_size, progress
        self.mask_rng = np.random.default_rng([seed, 0])
        self.accept_rng = np.random.default_rng([seed, 1])
        self.tried: set[tuple[str, str, str]] = set()

    def children(
        self, current: list[Member], r: int, children: int, elements: Sequence[str]
    ) -> list[_Candidate]:
        """Round `r`'s candidates: per parent, `children` masked elements drawn from its own, each replaced by
        the proposer's picks among the elements the parent lacks (never a triple tried before)."""
        batch: list[_Candidate] = []
        for parent in current:
            own = sorted(el.symbol for el in parent.structure.composition.elements)
            masks = Counter(str(x) for x in self.mask_rng.choice(own, size=children))
            open_elements = [e for e in elements if e not in own]
            for masked in sorted(masks):
                pool = [e for e in open_elements if (parent.id, masked, e) not in self.tried]
                for proposal in self.proposer.propose(parent.structure, masked, pool, masks[masked]):
                    self.tried.add((parent.id, masked, proposal.replacement))
                    child = parent.structure.copy()
                    child.replace_species({masked: proposal.replacement})
                    cid = f"r{r}-{len(batch) + 1:04d}"
                    order = r * 1_000_000 + len(batch)
                    batch.append(_Candidate(cid, r, parent, parent.seed_id, masked, proposal, child, order))
        return batch

    def evaluate(self, batch: list[_Candidate], desc: str) -> list[Member]:
        """Relax, place and judge a round's candidates chunk by chunk; rows written as they finish."""
        kept = []
        for start in range(0, len(batch), self.chunk_size):
            chunk = batch[start : start + self.chunk_size]
            todo = [c for c in chunk if c.id not in self.log.rows]
            done = (
                self.relaxer.relax([c.structure for c in todo], progress=self.progress, desc=desc)
                if todo
                else []
            )
            results = dict(zip((c.id for c in todo), done, strict=True))
            for c in chunk:
                u = float(
                    self.accept_rng.random()
                )  # drawn for every candidate: a resumed replay stays in step
                member = self._resumed(c) if c.id in self.log.rows else self._judge(c, results[c.id], u)
                if member is not None:
                    kept.append(member)
        return kept

    def _resumed(self, c: _Candidate) -> Member | None:
        row = self.log.rows[c.id]
        expected = {
            "round": str(c.round),
            "parent_id": c.parent.id if c.parent else "",
            "masked_element": c.masked,
            "replacement": c.proposal.replacement if c.proposal else "",
            "proposer": self.proposer.name if c.parent else "",
        }
        wrong = {k: (row[k], v) for k, v in expected.items() if row[k] != v}
        if wrong:
            raise MutationError(
                f"{self.log.path}: row {c.id} does not match this search ({wrong}): it was written with other "
                "seeds or options; choose another output"
            )
        if row["accepted"] != "True":
            return None
        structure = Structure.from_dict(json.loads(row["relaxed_structure"]))
        return Member(c.id, c.seed_id, structure, float(row["e_hull"]), c.order)

    def _judge(self, c: _Candidate, result, u: float) -> Member | None:
        e_hull, why = _e_hull(self.hull, result)
        parent_e = c.parent.e_hull if c.parent else math.nan
        if why is not None:
            ok = False
        elif c.parent is None:
            ok, why = True, "seed"
        else:
            accept, threshold, temperature = self.rule
            ok, why = _accept(accept, e_hull, parent_e, u, threshold, temperature)
        relaxed = result.structure if result.structure is not None and not result.error else None
        self.log.write(
            {
                "round": c.round,
                "id": c.id,
                "parent_id": c.parent.id if c.parent else "",
                "seed_id": c.seed_id,
                "proposer": self.proposer.name if c.parent else "",
                "masked_element": c.masked,
                "replacement": c.proposal.replacement if c.proposal else "",
                "formula": c.structure.composition.reduced_formula,
                "score": c.proposal.score if c.proposal else None,
                "substitution_probability": c.proposal.substitution_probability if c.proposal else None,
                "relax_error": result.error,
                "converged": result.converged,
                "steps": result.steps,
                "energy_per_atom": float(result.energy_per_atom) if np.isfinite(result.energy) else None,
                "e_hull": e_hull,
                "parent_e_hull": parent_e,
                "accepted": ok,
                "reason": why,
                "relaxed_structure": json.dumps(relaxed.as_dict(), separators=(",", ":"))
                if relaxed
                else None,
            }
        )
        return Member(c.id, c.seed_id, relaxed, e_hull, c.order) if ok else None


def mutation_search(
    seeds: Sequence[tuple[str, Structure]],
    proposer,
    relaxer,
    hull,
    out: str | os.PathLike,
    *,
    rounds: int = 2,
    population: int = 8,
    children: int = 4,
    accept: str = "improve",
    threshold: float = 0.1,
    temperature: float = 0.05,
    elements: Sequence[str] | None = None,
    seed: int = 0,
    resume: bool = False,
    chunk_size: int = 16,
    progress: bool = True,
) -> MutationResult:
    """Run the mutation search (module docstring) from ``seeds`` (id, structure) and log it to ``out``.

    Args:
        proposer: an ``InfillProposer`` or ``RandomProposer`` (anything with ``name`` and ``propose``).
        relaxer: ``relax(structures, progress=, desc=) -> list[RelaxResult]`` (e.g. ``BatchedRelaxer``).
        hull: a ``HullReference`` (``e_above_hull``, ``phase_diagram``).
        rounds, population, children: rounds of mutation, population size, candidates per parent and round.
        accept, threshold, temperature: the acceptance rule (``ACCEPT_RULES``) and its parameters.
        elements: replacement elements (default: ``hull_elements(hull)``).
        seed: seeds the masked-element draws and the metropolis rule (the random proposer has its own).
        resume: continue an existing log ``out`` (otherwise an existing file is an error).
        chunk_size: candidates relaxed per ``relax`` call (their rows are written after each call).
    """
    if accept not in ACCEPT_RULES:
        raise MutationError(f"accept must be one of {ACCEPT_RULES}, got {accept!r}")
    if rounds < 0 or population < 1 or children < 1 or chunk_size < 1:
        raise MutationError("rounds must be >= 0, population, children and chunk_size >= 1")
    if accept == "metropolis" and temperature <= 0:
        raise MutationError("the metropolis rule needs temperature > 0")
    if not seeds:
        raise MutationError("no seed structures")
    if len({i for i, _ in seeds}) != len(seeds):
        raise MutationError("seed ids must be unique")
    elements = list(elements) if elements is not None else hull_elements(hull)
    if not elements:
        raise MutationError("no replacement element: the hull has no elemental reference")
    log = _Log(Path(out), resume)
    n_resumed = len(log.rows)
    search = _Search(proposer, relaxer, hull, log, accept, threshold, temperature, seed, chunk_size, progress)
    try:
        start = [_Candidate(i, 0, None, i, "", None, s, k) for k, (i, s) in enumerate(seeds)]
        current = _select(search.evaluate(start, "seeds: relax"), population)
        for r in range(1, rounds + 1):
            batch = search.children(current, r, children, elements)
            current = _select([*current, *search.evaluate(batch, f"round {r}: relax")], population)
    finally:
        log.close()
    rows = [_typed(log.rows[i]) for i in log.order]
    return MutationResult(rows, current, n_resumed)
