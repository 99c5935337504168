"""Training pairs of the FlowLLM refiner: x1 a training structure, x0 an LLM sample of the same composition.

FlowLLM (Sriram et al. 2024) prompts the fine-tuned LLM with x1's formula and pairs atom i of x0 with
atom i of x1. Here the LLM writes under formula-constrained decoding (elements and counts always
match), both structures are Niggli-reduced (as FlowMM reduces its data), and the atoms of each element
are paired by an optimal assignment on the torus (`scipy.optimize.linear_sum_assignment` on squared
shortest displacements); the mean transport cost of both pairings is kept for the report.

Pairs are cached on disk as a `datasets.Dataset`, in a folder named by a key over the LLM (path or id,
revision, weights), the data (ids and structures) and the sampling settings. Generation writes one
JSON-lines shard per chunk as it goes, so an interrupted run resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Value
from pymatgen.core import Structure
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from hf_crystal.prompts import format_formula
from hf_crystal.sampling import TEMPERATURE, TOP_P

__all__ = ["PairSettings", "assign_atoms", "build_pairs", "pairs_cache_key", "transport_cost"]

#: Structures per generation shard: the unit of resumption.
SHARD_SIZE = 256
FEATURES = Features(
    {
        "material_id": Value("string"),
        "x1": Value("string"),
        "llm_text": Value("string"),
        "x0": Value("string"),
        "error": Value("string"),
        "cost_index": Value("float64"),
        "cost_assigned": Value("float64"),
    }
)


def _displacement(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Shortest displacement on the unit torus from x0 to x1, in [-0.5, 0.5)."""
    return (x1 - x0 + 0.5) % 1.0 - 0.5


def assign_atoms(x0: Structure, x1: Structure, optimal: bool = True) -> np.ndarray:
    """Order of x0's sites pairing each site i of x1 with a site of the same element (`x0[order[i]]`).

    Within each element, the optimal assignment minimises the sum of squared torus displacements of
    the fractional coordinates; `optimal=False` pairs them by index instead (the k-th atom of an element
    in x0 with the k-th in x1: FlowLLM's pairing, for atoms written in any element order). Raises
    ValueError when the two compositions differ.
    """
    if x0.composition != x1.composition:
        raise ValueError(f"cannot pair {x0.composition.formula} with {x1.composition.formula}")
    species0 = np.array([site.specie.symbol for site in x0])
    species1 = np.array([site.specie.symbol for site in x1])
    order = np.empty(len(x1), dtype=int)
    for symbol in np.unique(species1):
        i1, i0 = np.flatnonzero(species1 == symbol), np.flatnonzero(species0 == symbol)
        if not optimal:
            order[i1] = i0
            continue
        d = _displacement(x0.frac_coords[i0][None, :, :], x1.frac_coords[i1][:, None, :])
        rows, cols = linear_sum_assignment((d**2).sum(-1))
        order[i1[rows]] = i0[cols]
    return order


def transport_cost(x0: Structure, x1: Structure, order: Sequence[int] | None = None) -> float:
    """Mean squared torus displacement per atom (fractional units) from x0 (reordered) to x1.

    The per-crystal mean displacement is removed first: the flow's coordinate velocities are defined
    up to a common translation, so a rigid shift costs nothing.
    """
    frac0 = x0.frac_coords if order is None else x0.frac_coords[np.asarray(order)]
    d = _displacement(frac0, x1.frac_coords)
    d = d - d.mean(axis=0)
    return float((d**2).sum(-1).mean())


@dataclass(frozen=True)
class PairSettings:
    """How x0 is drawn from the LLM; part of the cache key."""

    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    seed: int = 0
    batch_size: int = 64
    #: Wyckoff-text LLM: samples drawn per structure, the first whose orbits are x1's kept (1: FlowLLM's one).
    attempts: int = 1


def _weights_digest(model: str, revision: str | None = None) -> str:
    """A digest of the weight files (their sizes and first MB) of a local model folder or of an embedded model's
    folder (`hf_crystal.embedded`: retrained in place under one Hub id), with its base's for a LoRA adapter; ''
    for another Hub id."""
    from hf_crystal import embedded

    folder = Path(embedded.resolve(model, revision)[0])
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():  # an adapter's samples depend on its base as much
        config = json.loads(adapter_config.read_text())
        base = config.get("base_model_name_or_path")
        if base:
            digest.update(_weights_digest(base, config.get("revision")).encode())
    return digest.hexdigest()


def pairs_cache_key(
    model: str,
    revision: str | None,
    ids: Sequence[str],
    structures: Sequence[Structure],
    settings: PairSettings,
    crystal_format: str = "xyz",
) -> str:
    """A short hash naming the cache folder of one (LLM, data, sampling settings, text format) combination."""
    data = hashlib.sha256()
    for material_id, structure in zip(ids, structures, strict=True):
        data.update(f"{material_id}:{structure.composition.formula}:{structure.volume:.4f}".encode())
    key = {
        "model": str(model),
        "revision": revision,
        "weights": _weights_digest(model, revision),
        "data": data.hexdigest(),
        # One attempt (the default) leaves the key as it was before `attempts` existed: old caches stay valid.
        "settings": {k: v for k, v in asdict(settings).items() if k != "attempts" or v != 1},
    }
    if crystal_format != "xyz":  # keys of xyz pairs stay those of the caches written before the Wyckoff text
        key["crystal_format"] = crystal_format
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _pair_rows(pipe, ids, structures, settings: PairSettings, shard: int) -> list[dict]:
    targets = [s.get_reduced_structure() for s in structures]
    conditions = [{"formula": format_formula(s.composition)} for s in targets]
    groups = pipe(
        conditions,
        batch_size=settings.batch_size,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_sites=max(len(s) for s in targets),
        formula_units="cell",  # x0 has x1's atoms
        seed=settings.seed * 1_000_003 + shard,  # each shard draws its own samples, reproducibly
    )
    rows = []
    for material_id, x1, (sample,) in zip(ids, targets, groups, strict=True):
        row = {"material_id": material_id, "x1": x1.to(fmt="json"), "llm_text": sample["text"]}
        if sample["structure"] is None:  # cannot happen under constrained decoding, but never drop silently
            rows.append(
                {**row, "x0": None, "error": sample["error"], "cost_index": None, "cost_assigned": None}
            )
            continue
        x0 = sample["structure"].get_reduced_structure()
        order = assign_atoms(x0, x1)
        paired = Structure(x0.lattice, [x0[i].specie for i in order], x0.frac_coords[order])
        by_index = assign_atoms(x0, x1, optimal=False)
        rows.append(
            {
                **row,
                "x0": paired.to(fmt="json"),
                "error": None,
                "cost_index": transport_cost(x0, x1, by_index),
                "cost_assigned": transport_cost(paired, x1),
            }
        )
    return rows


def build_pairs(
    pipe,
    ids: Sequence[str],
    structures: Sequence[Structure],
    cache_dir: str | Path,
    settings: PairSettings = PairSettings(),
    *,
    model_name: str,
    revision: str | None = None,
) -> Dataset:
    """(x0, x1) pairs for `structures`, generated with `pipe` (a "crystal-generation" pipeline) or read from cache.

    Columns: material_id, x1 and x0 (pymatgen JSON, lossless: an LLM may put two atoms on one spot,
    which a CIF reader would merge; Niggli-reduced; x0's sites reordered to pair with x1's site by site), llm_text (the LLM's raw sample), error (why x0 is missing, if it is),
    cost_index (FlowLLM's index pairing, per element) and cost_assigned
    (the optimal assignment), both from `transport_cost`. `model_name` / `revision` name the LLM in the
    cache key. Shards go to `cache_dir/<key>/`; a rerun resumes at the first missing shard.

    A Wyckoff-text LLM (`pipe.crystal_format`) writes x0 for x1's formula and space group, and its pairs
    match atoms within Wyckoff orbits in one cell: `hf_crystal.training.wyckoff_pairs`, whose
    `WYCKOFF_FEATURES` are the columns then.
    """
    crystal_format = getattr(pipe, "crystal_format", "xyz")
    pair_rows, features = _pair_rows, FEATURES
    if crystal_format == "wyckoff":
        from hf_crystal.training.wyckoff_pairs import WYCKOFF_FEATURES, wyckoff_pair_rows

        pair_rows, features = wyckoff_pair_rows, WYCKOFF_FEATURES
    key = pairs_cache_key(model_name, revision, ids, structures, settings, crystal_format)
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = (len(structures) + SHARD_SIZE - 1) // SHARD_SIZE
    paths = [folder / f"pairs-{k:05d}.jsonl" for k in range(n_shards)]
    with tqdm(total=len(structures), desc="LLM samples for refiner pairs", unit=" structures") as bar:
        for k, path in enumerate(paths):
            chunk = slice(k * SHARD_SIZE, (k + 1) * SHARD_SIZE)
            if not path.exists():
                rows = pair_rows(pipe, ids[chunk], structures[chunk], settings, k)
                partial = path.with_suffix(".partial")
                partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
                partial.rename(path)  # a shard exists whole or not at all
            bar.update(len(ids[chunk]))
    return Dataset.from_json([str(p) for p in paths], features=features, cache_dir=str(folder / "arrow"))
