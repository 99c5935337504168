"""Stability: MP2020-corrected CHGNet energies, convex hulls and energy above hull.

Two hulls:

- a user-supplied entries file (pymatgen ``ComputedEntry`` / ``ComputedStructureEntry`` JSON, e.g.
  Matbench Discovery's MP entries), used as given (MP entries already carry their MP2020 corrections);
- the self-consistent default (SPEC 5): elemental reference states built with ASE plus a reference set of
  structures, all relaxed with the same CHGNet relaxer and corrected the same way.

MP2020 on CHGNet energies follows the usual practice for ML-potential energies (Matbench Discovery,
CHGNet's own scripts): each structure becomes a ``ComputedStructureEntry`` carrying the parameters the
Materials Project run would have had (``MPRelaxSet``: GGA or GGA+U, its Hubbard U values and POTCAR
symbols), processed by ``MaterialsProject2020Compatibility(check_potcar=False)``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Element, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

# Gruver et al. 2024 (metastable, E_hull < 0.1 eV/atom) and Sriram et al. 2024, FlowLLM (stable:
# E_hull < 0 eV/atom and at least two elements).
METASTABLE_THRESHOLD = 0.1
STABLE_THRESHOLD = 0.0
STABLE_MIN_NARY = 2
# Elements whose reference state is a diatomic molecule, with experimental bond lengths in Å
# (CRC Handbook), placed alone in a cubic box large enough that images do not see each other in
# CHGNet's 5 Å graph.
DIATOMIC_BOND_LENGTHS = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
MOLECULE_BOX = 12.0
# Simple prototypes tried (lowest relaxed energy kept) for elements ASE has no buildable reference for.
FALLBACK_PROTOTYPES = ("fcc", "bcc", "hcp", "sc", "diamond")


class HullError(ValueError):
    """An unreadable entries file or a hull that cannot be built."""


def mp2020_parameters(structure: Structure) -> dict:
    """Parameters of the Materials Project calculation of this structure (run type, U values, POTCARs)."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    try:
        mp_set = MPRelaxSet(structure)
        with warnings.catch_warnings():  # input-set advice (ISMEAR for metals ...) is irrelevant here
            warnings.simplefilter("ignore")
            incar = mp_set.incar
        symbols = mp_set.potcar_symbols
        site_symbols = mp_set.poscar.site_symbols
    except Exception:  # an element MP's input set does not cover: no U, generic POTCAR names
        return {"run_type": "GGA", "is_hubbard": False, "hubbards": {}, "potcar_spec": []}
    hubbards = dict(zip(site_symbols, incar.get("LDAUU", []), strict=False)) if incar.get("LDAU") else {}
    is_hubbard = any(u != 0 for u in hubbards.values())
    return {
        "run_type": "GGA+U" if is_hubbard else "GGA",
        "is_hubbard": is_hubbard,
        "hubbards": hubbards if is_hubbard else {},
        "potcar_spec": [{"titel": f"PAW_PBE {sym}", "hash": None} for sym in symbols],
    }


def corrected_entries(
    structures: Sequence[Structure | None],
    energies: Sequence[float],
    entry_ids: Sequence[str] | None = None,
) -> list[ComputedStructureEntry | None]:
    """MP2020-corrected entries from total energies (eV); None where the structure or energy is missing
    or the compatibility scheme rejects the entry."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    compat = MaterialsProject2020Compatibility(check_potcar=False)
    out: list[ComputedStructureEntry | None] = []
    for i, (s, e) in enumerate(zip(structures, energies, strict=True)):
        if s is None or not np.isfinite(e):
            out.append(None)
            continue
        entry = ComputedStructureEntry(
            s,
            float(e),
            parameters=mp2020_parameters(s),
            entry_id=entry_ids[i] if entry_ids is not None else None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(compat.process_entry(entry, clean=True, on_error="ignore"))
    return out


def load_entries(path: str | Path) -> list[ComputedEntry]:
    """Read pymatgen entries from JSON (``.json`` or ``.json.gz``): a list of entry dicts, a mapping of
    ids to entry dicts, or a pandas-style table with an ``entry`` column (Matbench Discovery's file)."""
    from monty.json import MontyDecoder

    path = Path(path)
    if not path.exists():
        raise HullError(f"hull entries file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise HullError(f"{path} is not a JSON file of pymatgen entries: {exc}") from exc
    dicts = list(_entry_dicts(data))
    if not dicts:
        raise HullError(f"{path} holds no pymatgen entry dicts (objects with '@class': '...Entry')")
    decoder = MontyDecoder()
    entries = [decoder.process_decoded(d) for d in dicts]
    bad = [e for e in entries if not isinstance(e, ComputedEntry)]
    if bad:
        raise HullError(f"{path}: {len(bad)} objects are not ComputedEntry/ComputedStructureEntry")
    return entries


def _entry_dicts(data, depth: int = 0) -> Iterable[dict]:
    if isinstance(data, dict) and str(data.get("@class", "")).endswith("Entry"):
        yield data
    elif depth < 3 and isinstance(data, dict):
        for value in data.values():
            yield from _entry_dicts(value, depth + 1)
    elif depth < 3 and isinstance(data, list):
        for value in data:
            yield from _entry_dicts(value, depth + 1)


def _elements(entry: ComputedEntry) -> frozenset[str]:
    return frozenset(el.symbol for el in entry.composition.elements)


class HullReference:
    """Convex hulls built on demand per chemical system from a set of entries.

    ``description`` says which hull this is; report it next to every stability number.
    """

    def __init__(self, entries: Iterable[ComputedEntry], description: str):
        self.description = description
        self._by_system: dict[frozenset[str], list[ComputedEntry]] = defaultdict(list)
        for entry in entries:
            self._by_system[_elements(entry)].append(entry)
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @property
    def n_entries(self) -> int:
        return sum(len(v) for v in self._by_system.values())

    def phase_diagram(self, elements: Iterable[str]) -> PhaseDiagram:
        """Phase diagram of the chemical system spanned by ``elements`` (all its subsystems' entries)."""
        system = frozenset(elements)
        missing = sorted(el for el in system if frozenset([el]) not in self._by_system)
        if missing:
            raise HullError(f"the hull has no elemental reference for {', '.join(missing)}")
        if system not in self._diagrams:
            entries = [
                e
                for r in range(1, len(system) + 1)
                for sub in itertools.combinations(sorted(system), r)
                for e in self._by_system.get(frozenset(sub), [])
            ]
            try:
                self._diagrams[system] = PhaseDiagram(entries)
            except ValueError as exc:  # typically a missing elemental reference
                raise HullError(f"no hull for {'-'.join(sorted(system))}: {exc}") from exc
        return self._diagrams[system]

    def e_above_hull(self, entry: ComputedEntry) -> float:
        """Energy above the hull in eV/atom (negative below it)."""
        diagram = self.phase_diagram(_elements(entry))
        try:
            return float(diagram.get_e_above_hull(entry, allow_negative=True))
        except ValueError as exc:
            raise HullError(f"no E_hull for {entry.composition.reduced_formula}: {exc}") from exc


def elemental_reference_structures(element: str) -> list[tuple[Structure, bool]]:
    """Candidate reference-state structures of an element and whether to relax their cell.

    Diatomic molecules (H, N, O, halogens) sit in a box (cell fixed); other elements use ASE's reference
    crystal (``ase.build.bulk``), noble gases included (a lone atom in a box has no CHGNet graph edges);
    elements without a buildable ASE reference get simple prototypes, the lowest of which wins on the hull.
    """
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii, vdw_radii
    from pymatgen.io.ase import AseAtomsAdaptor

    if element in DIATOMIC_BOND_LENGTHS:
        c = MOLECULE_BOX / 2
        d = DIATOMIC_BOND_LENGTHS[element]
        box = Lattice.cubic(MOLECULE_BOX)
        return [(Structure(box, [element] * 2, [[c, c, c], [c, c, c + d]], coords_are_cartesian=True), False)]
    try:
        return [(AseAtomsAdaptor.get_structure(bulk(element)), True)]
    except (ValueError, KeyError, RuntimeError, TypeError):
        pass
    z = atomic_numbers[element]
    noble = Element(element).is_noble_gas
    nn = 2 * (vdw_radii[z] if noble and np.isfinite(vdw_radii[z]) else covalent_radii[z])
    lattice_constant = {
        "fcc": nn * 2**0.5,
        "bcc": nn * 2 / 3**0.5,
        "hcp": nn,
        "sc": nn,
        "diamond": nn * 4 / 3**0.5,
    }
    candidates = []
    for proto in ("fcc",) if noble else FALLBACK_PROTOTYPES:
        atoms = bulk(element, proto, a=lattice_constant[proto])
        candidates.append((AseAtomsAdaptor.get_structure(atoms), True))
    return candidates


def default_hull(
    reference: Sequence[Structure],
    elements: Iterable[str],
    relaxer,
    *,
    progress: bool = True,
) -> tuple[HullReference, dict]:
    """The self-consistent hull: elemental references for ``elements`` (plus every element in
    ``reference``) and the ``reference`` structures, relaxed with ``relaxer`` and MP2020-corrected.

    Returns the hull and a summary (counts of entries used and of structures skipped, with reasons).
    """
    from hf_crystal.evaluation.relax import BatchedRelaxer

    all_elements = sorted(set(elements) | {el.symbol for s in reference for el in s.composition.elements})
    bulk_refs, molecules = [], []
    for el in all_elements:
        for s, relax_cell in elemental_reference_structures(el):
            (bulk_refs if relax_cell else molecules).append(s)
    fixed_cell = BatchedRelaxer(
        relaxer.model,
        optimizer=relaxer.optimizer,
        fmax=relaxer.fmax,
        max_steps=relaxer.max_steps,
        relax_cell=False,
        batch_size=relaxer.batch_size,
        cache_dir=relaxer.cache.directory if relaxer.cache else None,
    )
    structures = [*molecules, *bulk_refs, *reference]
    results = fixed_cell.relax(molecules, progress=progress, desc="hull: molecules")
    results += relaxer.relax([*bulk_refs, *reference], progress=progress, desc="hull: relax references")
    entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
    kept = [e for e in entries if e is not None]
    skipped = {
        s.composition.reduced_formula: (r.error or "MP2020 rejected")
        for s, r, e in zip(structures, results, entries, strict=True)
        if e is None
    }
    description = (
        f"self-consistent CHGNet {relaxer.model.version} + MP2020 hull: {len(all_elements)} elemental "
        f"references (ASE) and {len(reference)} reference structures"
    )
    summary = {"hull_entries": len(kept), "hull_skipped": len(skipped), "hull_skipped_examples": skipped}
    return HullReference(kept, description), summary


def stability_flags(e_hull: float, n_elements: int) -> dict[str, bool]:
    """``metastable`` (E_hull < 0.1) and ``stable`` (E_hull < 0 with >= 2 elements); False when NaN."""
    finite = bool(np.isfinite(e_hull))
    return {
        "metastable": finite and e_hull < METASTABLE_THRESHOLD,
        "stable": finite and e_hull < STABLE_THRESHOLD and n_elements >= STABLE_MIN_NARY,
    }
