"""Stability: MP2020-corrected CHGNet energies, convex hulls and energy above hull.

Three hulls:

- the shipped default (``SHIPPED_HULL``, SPEC 5): MP-20's train and val structures (Materials Project
  DFT-relaxed geometries) with CHGNet static energies, plus ASE elemental reference states relaxed with
  CHGNet, all MP2020-corrected as the samples are; built once by ``build_hull_file``
  (``hf-crystal hull build``) and stored as entries without structures;
- a user-supplied entries file (pymatgen ``ComputedEntry`` / ``ComputedStructureEntry`` JSON, e.g.
  Matbench Discovery's MP entries), used as given (MP entries already carry their MP2020 corrections);
- the self-consistent hull (``SELF_CONSISTENT``): elemental reference states built with ASE plus a
  reference set of structures, all relaxed with the same CHGNet relaxer and corrected the same way.

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
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Element, Lattice, Structure
from pymatgen.core.periodic_table import get_el_sp
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from tqdm.auto import tqdm

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
# The hull shipped with the package (``hf-crystal hull build``) and the name that selects the
# self-consistent hull instead of an entries file.
SHIPPED_HULL = Path(__file__).with_name("data") / "mp20_chgnet_hull.json.gz"
SELF_CONSISTENT = "self-consistent"
# Elements that get a reference state in a built hull: H to Pu, the elements CHGNet's embedding covers.
HULL_ELEMENTS = tuple(Element.from_Z(z).symbol for z in range(1, 95))


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


def relaxed_entries(
    candidates: Sequence[tuple[Structure, bool]],
    relaxer,
    *,
    entry_ids: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "hull: relax references",
) -> list[tuple[ComputedStructureEntry | None, str | None]]:
    """Relax (structure, relax_cell) candidates with ``relaxer`` (a cell-relaxing ``BatchedRelaxer``; the
    fixed-cell ones with the same settings and cache) and MP2020-correct them: (entry, None) or (None,
    reason) per candidate, in order."""
    from hf_crystal.evaluation.relax import BatchedRelaxer

    fixed_cell = BatchedRelaxer(
        relaxer.model,
        optimizer=relaxer.optimizer,
        fmax=relaxer.fmax,
        max_steps=relaxer.max_steps,
        relax_cell=False,
        batch_size=relaxer.batch_size,
        cache_dir=relaxer.cache.directory if relaxer.cache else None,
    )
    results = [None] * len(candidates)
    for runner, relax_cell, what in ((fixed_cell, False, "fixed cell"), (relaxer, True, "cell relaxed")):
        todo = [i for i, (_, rc) in enumerate(candidates) if rc == relax_cell]
        if todo:
            done = runner.relax([candidates[i][0] for i in todo], progress=progress, desc=f"{desc} ({what})")
            for i, r in zip(todo, done, strict=True):
                results[i] = r
    entries = corrected_entries([r.structure for r in results], [r.energy for r in results], entry_ids)
    return [
        (e, None if e is not None else (r.error or "MP2020 rejected"))
        for r, e in zip(results, entries, strict=True)
    ]


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
    all_elements = sorted(set(elements) | {el.symbol for s in reference for el in s.composition.elements})
    candidates = [c for el in all_elements for c in elemental_reference_structures(el)]
    candidates += [(s, True) for s in reference]
    outcomes = relaxed_entries(candidates, relaxer, progress=progress)
    kept = [e for e, _ in outcomes if e is not None]
    skipped = [
        (s.composition.reduced_formula, why)
        for (s, _), (e, why) in zip(candidates, outcomes, strict=True)
        if e is None
    ]
    description = (
        f"self-consistent CHGNet {relaxer.model.version} + MP2020 hull: {len(all_elements)} elemental "
        f"references (ASE) and {len(reference)} reference structures"
    )
    summary = {
        "hull_entries": len(kept),
        "hull_skipped": len(skipped),
        "hull_skipped_examples": dict(skipped),
    }
    return HullReference(kept, description), summary


def static_energies(structures: Sequence[Structure], model) -> list[tuple[float, str | None]]:
    """CHGNet total energies (eV) at the given geometries from one batched, energy-only forward pass:
    (energy, None) or (NaN, reason) per structure, in order."""
    import torch

    nan = float("nan")
    out: list[tuple[float, str | None]] = [(nan, "not computed")] * len(structures)
    graphs, owners = [], []
    converter = model.graph_converter
    previous, converter.on_isolated_atoms = converter.on_isolated_atoms, "error"
    try:
        for k, s in enumerate(structures):
            if not s.is_ordered:
                out[k] = (nan, "disordered structure (partial occupancies)")
                continue
            try:
                graphs.append(converter(s))
                owners.append(k)
            except Exception as exc:  # e.g. an isolated atom
                out[k] = (nan, f"graph construction failed: {exc}")
    finally:
        converter.on_isolated_atoms = previous

    def forward(batch: list) -> list[dict]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = model.predict_graph(batch, task="e", batch_size=len(batch))
        return [preds] if isinstance(preds, dict) else list(preds)

    try:
        preds: list[dict | str] = forward(graphs) if graphs else []
    except Exception:  # isolate the structure that broke the batch
        preds = []
        for g in graphs:
            try:
                preds += forward([g])
            except Exception as exc:
                preds.append(f"CHGNet failed: {exc}")
    for k, pred in zip(owners, preds, strict=True):
        if isinstance(pred, str):
            out[k] = (nan, pred)
            continue
        energy = float(pred["e"]) * (len(structures[k]) if model.is_intensive else 1)
        out[k] = (energy, None) if np.isfinite(energy) else (nan, "non-finite CHGNet energy")
    return out


def build_hull_file(
    ids: Sequence[str],
    structures: Sequence[Structure],
    out: str | Path,
    *,
    model=None,
    relaxer=None,
    elements: Iterable[str] = HULL_ELEMENTS,
    skipped: Sequence[tuple[str, str]] = (),
    sources: Sequence[str] = (),
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Write a hull entries file (gzip JSON, entries without structures; ``load_hull`` reads it): CHGNet
    static energies of ``structures`` (relaxed geometries, e.g. Materials Project's) and relaxed ASE
    reference states of ``elements`` and of every element in ``structures``, all MP2020-corrected.

    Structures are deduplicated by id (the first one kept, the others counted as ``n_duplicates``).
    Resumable: finished structures go to ``<out>.progress.jsonl`` batch by batch and a rerun with the same
    ``out`` computes only the rest (the elemental relaxations come back from ``relaxer``'s cache); delete
    that file to start over. ``skipped`` lists (id, reason) the caller set aside (e.g. unreadable); they are
    counted in the file with the structures that fail here. Returns the file's summary
    (everything but the entries).
    """
    from hf_crystal.cache import cache_dir
    from hf_crystal.evaluation.relax import BatchedRelaxer

    if len(ids) != len(structures):
        raise HullError(f"{len(ids)} ids for {len(structures)} structures")
    first: dict[str, int] = {}  # id -> its first occurrence
    for k, name in enumerate(ids):
        first.setdefault(str(name), k)
    n_duplicates = len(ids) - len(first)
    ids = list(first)
    structures = [structures[k] for k in first.values()]
    if batch_size < 1:
        raise HullError("batch_size must be >= 1")
    if model is None:
        from chgnet.model import CHGNet

        model = relaxer.model if relaxer is not None else CHGNet.load(verbose=False, use_device="cpu")
    relaxer = relaxer or BatchedRelaxer(model, cache_dir=cache_dir("relax"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"model": f"chgnet-{model.version}", "energies": "static (CHGNet at the given geometries)"}
    done = _read_progress(out, header)
    todo = [i for i, name in enumerate(ids) if name not in done]
    with open(_progress_path(out), "a") as log:
        if not done:
            log.write(json.dumps({"header": header}) + "\n")
        bar = tqdm(
            total=len(ids), initial=len(ids) - len(todo), desc="hull: static energies", disable=not progress
        )
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = [structures[i] for i in chunk]
            energies = static_energies(batch, model)
            entries = corrected_entries(batch, [e for e, _ in energies], [ids[i] for i in chunk])
            for i, (_, why), entry in zip(chunk, energies, entries, strict=True):
                record = {"id": ids[i]}
                record |= (
                    {"entry": _compact(entry).as_dict()}
                    if entry is not None
                    else {"error": why or "MP2020 rejected"}
                )
                done[ids[i]] = record
                log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(len(chunk))
        bar.close()
    symbols = sorted(set(elements) | {el.symbol for s in structures for el in s.composition.elements})
    candidates, ref_ids = [], []
    for el in symbols:
        for k, candidate in enumerate(elemental_reference_structures(el)):
            candidates.append(candidate)
            ref_ids.append(f"ase-reference:{el}:{k}")
    refs = relaxed_entries(candidates, relaxer, entry_ids=ref_ids, progress=progress, desc="hull: elements")
    failed = [*skipped, *((i, done[i]["error"]) for i in ids if "error" in done[i])]
    failed += [(i, why) for i, (e, why) in zip(ref_ids, refs, strict=True) if e is None]
    compounds = [done[i]["entry"] for i in ids if "entry" in done[i]]
    entries = [*(_compact(e).as_dict() for e, _ in refs if e is not None), *compounds]
    summary = {
        "description": (
            f"CHGNet {model.version} + MP2020: static energies of {len(compounds)} "
            f"structures{' from ' + ', '.join(sources) if sources else ''} and relaxed ASE reference "
            f"states of {len(symbols)} elements"
        ),
        **header,
        "sources": list(sources),
        "n_structures": len(ids),
        "n_duplicates": n_duplicates,
        "n_elements": len(symbols),
        "n_entries": len(entries),
        "n_skipped": len(failed),
        "skipped": dict(Counter(_reason_kind(why) for _, why in failed).most_common()),
        "skipped_examples": failed[:20],
    }
    _write_gzip_json(out, {**summary, "entries": entries})
    return summary


def _reason_kind(why: str) -> str:
    """A skip reason without its details (after a colon, in parentheses), for counting."""
    return re.sub(r"\s*\(.*?\)", "", why.split(":")[0]).strip()


def _progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.jsonl")


def _read_progress(out: Path, header: dict) -> dict[str, dict]:
    """Finished records of an earlier run (id -> record); a truncated last line is dropped."""
    path = _progress_path(out)
    if not path.exists():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):  # a run killed mid-line: end that line, it is dropped below
        with open(path, "a") as fh:
            fh.write("\n")
    done: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "header" in record and record["header"] != header:
            raise HullError(
                f"{path} was written with other settings ({record['header']}): delete it to rebuild"
            )
        if "id" in record:
            done[record["id"]] = record
    return done


def _compact(entry: ComputedStructureEntry) -> ComputedEntry:
    """The entry without its structure: composition, CHGNet energy, MP2020 adjustments, run type and U."""
    parameters = {k: entry.parameters[k] for k in ("run_type", "hubbards") if k in entry.parameters}
    return ComputedEntry(
        entry.composition,
        entry.uncorrected_energy,
        energy_adjustments=entry.energy_adjustments,
        parameters=parameters,
        entry_id=entry.entry_id,
    )


def _write_gzip_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (temporary name, then rename); gzip without a timestamp, so that the same
    entries give the same bytes."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(json.dumps(data, separators=(",", ":")).encode())
    tmp.replace(path)


def stability_flags(e_hull: float, n_elements: int) -> dict[str, bool]:
    """``metastable`` (E_hull < 0.1) and ``stable`` (E_hull < 0 with >= 2 elements); False when NaN."""
    finite = bool(np.isfinite(e_hull))
    return {
        "metastable": finite and e_hull < METASTABLE_THRESHOLD,
        "stable": finite and e_hull < STABLE_THRESHOLD and n_elements >= STABLE_MIN_NARY,
    }
