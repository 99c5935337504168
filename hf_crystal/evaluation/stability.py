"""Stability against a convex hull: MP2020-corrected CHGNet energies and energy above hull.

Three hulls:

- the shipped default (``SHIPPED_HULL``): MP-20's train and val structures (Materials Project DFT-relaxed
  geometries) with CHGNet static energies, plus ASE elemental reference states relaxed with CHGNet, all
  MP2020-corrected as the samples are; built once by ``hf_crystal.evaluation.hull_build.build_hull_file``
  (``hf-crystal hull build``) and stored as entries without structures;
- a user-supplied entries file (pymatgen ``ComputedEntry`` / ``ComputedStructureEntry`` JSON, e.g.
  Matbench Discovery's MP entries), used as given (MP entries already carry their MP2020 corrections);
- the self-consistent hull (``SELF_CONSISTENT``, built by ``hull_build.default_hull``): elemental reference
  states built with ASE plus a reference set of structures, all relaxed with the same CHGNet relaxer and
  corrected the same way.

MP2020 on CHGNet energies follows the usual practice for ML-potential energies (Matbench Discovery,
CHGNet's own scripts): each structure becomes a ``ComputedStructureEntry`` carrying the parameters the
Materials Project run would have had (``MPRelaxSet``: GGA or GGA+U, its Hubbard U values and POTCAR
symbols), processed by ``MaterialsProject2020Compatibility(check_potcar=False)``.
"""

from __future__ import annotations

import gzip
import importlib
import itertools
import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Structure
from pymatgen.core.periodic_table import get_el_sp
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

# Gruver et al. 2024 (metastable, E_hull < 0.1 eV/atom) and Sriram et al. 2024, FlowLLM (stable:
# E_hull < 0 eV/atom and at least two elements).
METASTABLE_THRESHOLD = 0.1
STABLE_THRESHOLD = 0.0
STABLE_MIN_NARY = 2
# The hull shipped with the package (``hf-crystal hull build``) and the name that selects the
# self-consistent hull instead of an entries file.
SHIPPED_HULL = Path(__file__).with_name("data") / "mp20_chgnet_hull.json.gz"
SELF_CONSISTENT = "self-consistent"


class HullError(ValueError):
    """An unreadable entries file or a hull that cannot be built."""


def mp2020_parameters(structure: Structure) -> dict:
    """Parameters of the Materials Project calculation of this structure (run type, U values, POTCARs)."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    try:
        with warnings.catch_warnings():  # input-set advice (ISMEAR for metals, Yb_2 ...) is irrelevant here
            warnings.simplefilter("ignore")
            mp_set = MPRelaxSet(structure)
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
    return [_decode(d) for d in _read_entries_file(path)[0]]


def load_hull(path: str | Path) -> HullReference:
    """The hull of an entries file, described by the file's own ``description`` (files written by
    ``build_hull_file``) or by its name. Entries are decoded per chemical system when a sample needs it."""
    entries, data = _read_entries_file(path)
    path = Path(path)
    if path.resolve() == SHIPPED_HULL.resolve():
        what = f"shipped hull {path.name}"
    else:
        what = f"user-supplied entries: {path.name}"
    built = data.get("description") if isinstance(data, dict) else None
    return HullReference(entries, f"{what} ({built})" if built else what)


def shipped_hull() -> HullReference:
    """The hull shipped with the package (``SHIPPED_HULL``)."""
    if not SHIPPED_HULL.exists():
        raise HullError(
            f"the shipped hull {SHIPPED_HULL} is missing from this installation: reinstall hf-crystal, "
            "or pass an entries file (--hull FILE) or --hull self-consistent"
        )
    return load_hull(SHIPPED_HULL)


def _read_entries_file(path: str | Path) -> tuple[list[dict], object]:
    """(entry dicts, the whole JSON) of an entries file; the entries' classes are checked here, decoding them
    (``_decode``) is left to the caller."""
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
    for module, name in {(d.get("@module"), d["@class"]) for d in dicts}:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (TypeError, ImportError, AttributeError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, ComputedEntry)):
            n = sum(d["@class"] == name for d in dicts)
            raise HullError(
                f"{path}: {n} objects ({module}.{name}) are not ComputedEntry/ComputedStructureEntry"
            )
    if any("composition" not in d for d in dicts):
        raise HullError(f"{path}: entries without a 'composition'")
    return dicts, data


def _decode(d: dict) -> ComputedEntry:
    from monty.json import MontyDecoder

    try:
        return MontyDecoder().process_decoded(d)
    except Exception as exc:  # a malformed entry dict
        raise HullError(f"cannot decode entry {d.get('entry_id')}: {exc}") from exc


def _entry_dicts(data, depth: int = 0) -> Iterable[dict]:
    if isinstance(data, dict) and str(data.get("@class", "")).endswith("Entry"):
        yield data
    elif depth < 3 and isinstance(data, dict):
        for value in data.values():
            yield from _entry_dicts(value, depth + 1)
    elif depth < 3 and isinstance(data, list):
        for value in data:
            yield from _entry_dicts(value, depth + 1)


def _elements(entry: ComputedEntry | dict) -> frozenset[str]:
    """The chemical system of an entry or of an entry dict (read from its composition, not decoded)."""
    if isinstance(entry, dict):
        return frozenset(
            get_el_sp(k).symbol for k, amount in entry["composition"].items() if abs(amount) > 1e-8
        )
    return frozenset(el.symbol for el in entry.composition.elements)


class HullReference:
    """Convex hulls built on demand per chemical system from a set of entries.

    ``entries`` may be entry dicts (``load_hull``): those of a chemical system are decoded when its first
    diagram needs them. ``description`` says which hull this is; report it next to every stability number.
    """

    def __init__(self, entries: Iterable[ComputedEntry | dict], description: str):
        self.description = description
        self._by_system: dict[frozenset[str], list[ComputedEntry | dict]] = defaultdict(list)
        for entry in entries:
            self._by_system[_elements(entry)].append(entry)
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @property
    def n_entries(self) -> int:
        return sum(len(v) for v in self._by_system.values())

    def covers(self, elements: Iterable[str]) -> bool:
        """Whether the hull holds a compound (an entry of two or more elements) in the chemical system of
        ``elements`` or one of its subsystems; False for a single element (its system holds no compound)."""
        system = sorted(set(elements))
        return any(
            frozenset(sub) in self._by_system
            for r in range(2, len(system) + 1)
            for sub in itertools.combinations(system, r)
        )

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
                for e in self._decoded(frozenset(sub))
            ]
            try:
                self._diagrams[system] = PhaseDiagram(entries)
            except ValueError as exc:  # typically a missing elemental reference
                raise HullError(f"no hull for {'-'.join(sorted(system))}: {exc}") from exc
        return self._diagrams[system]

    def _decoded(self, system: frozenset[str]) -> list[ComputedEntry]:
        entries = self._by_system.get(system, [])
        entries[:] = [e if isinstance(e, ComputedEntry) else _decode(e) for e in entries]
        return entries

    def e_above_hull(self, entry: ComputedEntry) -> float:
        """Energy above the hull in eV/atom (negative below it)."""
        diagram = self.phase_diagram(_elements(entry))
        try:
            return float(diagram.get_e_above_hull(entry, allow_negative=True))
        except ValueError as exc:
            raise HullError(f"no E_hull for {entry.composition.reduced_formula}: {exc}") from exc

    def formation_energy_per_atom(self, entry: ComputedEntry) -> float:
        """Formation energy from the hull's elemental references, eV/atom."""
        return float(self.phase_diagram(_elements(entry)).get_form_energy_per_atom(entry))


def stability_flags(e_hull: float, n_elements: int) -> dict[str, bool]:
    """``metastable`` (E_hull < 0.1) and ``stable`` (E_hull < 0 with >= 2 elements); False when NaN."""
    finite = bool(np.isfinite(e_hull))
    return {
        "metastable": finite and e_hull < METASTABLE_THRESHOLD,
        "stable": finite and e_hull < STABLE_THRESHOLD and n_elements >= STABLE_MIN_NARY,
    }
