"""Building a convex hull: elemental reference states (ASE) and reference structures relaxed or evaluated with
CHGNet, MP2020-corrected (``hf-crystal hull build``, the self-consistent hull of ``evaluate``). Using a hull lives
in ``hf_crystal.evaluation.stability``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from tqdm.auto import tqdm

from hf_crystal.evaluation.stability import HullError, HullReference, corrected_entries

# Elements whose reference state is a diatomic molecule, with experimental bond lengths in Å
# (CRC Handbook), placed alone in a cubic box large enough that images do not see each other in
# CHGNet's 5 Å graph.
DIATOMIC_BOND_LENGTHS = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
MOLECULE_BOX = 12.0
# Simple prototypes tried (lowest relaxed energy kept) for elements ASE has no buildable reference for.
FALLBACK_PROTOTYPES = ("fcc", "bcc", "hcp", "sc", "diamond")
# Elements that get a reference state in a built hull: H to Pu, the elements CHGNet's embedding covers.
HULL_ELEMENTS = tuple(Element.from_Z(z).symbol for z in range(1, 95))


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
