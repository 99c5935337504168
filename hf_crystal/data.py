"""Crystal-text datasets: built from structure files (`hf_crystal.structure_io`), saved Hub-shaped
(`data/{split}-00000-of-00001.parquet` + `README.md` card, so `datasets.load_dataset(folder)` reads it and the
same folder is what `push_to_hub` uploads), loaded by folder or Hub id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from tqdm.auto import tqdm

from hf_crystal.crystal_format import DEFAULT_FORMAT, check_format
from hf_crystal.hub_access import snapshot
from hf_crystal.structure_io import DataFormatError, Record, iter_records
from hf_crystal.text import encode

__all__ = [
    "COMPUTED_COLUMNS",
    "BuildReport",
    "build_dataset",
    "load_crystal_dataset",
    "save_dataset",
    "unify_features",
    "verify_saved_dataset",
]

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# Tolerance for space-group detection; 0.1 Å is what the Materials Project uses.
SYMPREC = 0.1
# Columns the builder computes; a source column with one of these names is kept as "source_<name>".
COMPUTED_COLUMNS = (
    "material_id",
    "cif",
    "text",
    "formula",
    "full_formula",
    "elements",
    "n_atoms",
    "spacegroup",
    "crystal_format",
)


@dataclass
class BuildReport:
    """What a dataset build read, kept and skipped (skip reasons counted), per split.

    `null_counts[split][column]` is the number of empty (null) cells of every column of every split;
    `absent_columns[split]` lists the columns that split's source does not have at all (all null there,
    because every split shares one schema: the union of the sources' columns).
    """

    sources: dict[str, str]
    crystal_format: str = DEFAULT_FORMAT
    rows: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)
    renamed_columns: dict[str, str] = field(default_factory=dict)
    no_spacegroup: int = 0
    null_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    absent_columns: dict[str, list[str]] = field(default_factory=dict)

    def null_columns(self) -> dict[str, dict[str, int]]:
        """{column: {split: nulls}} for the columns with at least one null cell in some split."""
        columns = dict.fromkeys(c for counts in self.null_counts.values() for c, n in counts.items() if n)
        return {c: {split: counts.get(c, 0) for split, counts in self.null_counts.items()} for c in columns}

    def summary(self) -> str:
        lines = [f"rows: {', '.join(f'{k}={v}' for k, v in self.rows.items())} (text: {self.crystal_format})"]
        lines.append(f"skipped: {sum(self.skipped.values())}")
        lines += [f"  {n} x {reason}" for reason, n in self.skipped.most_common()]
        if self.no_spacegroup:
            lines.append(f"space group undetermined (left empty): {self.no_spacegroup}")
        if self.renamed_columns:
            lines.append(f"source columns renamed: {self.renamed_columns}")
        null_columns = self.null_columns()
        if null_columns:
            lines.append("null cells per column (per split):")
            for column, counts in null_columns.items():
                shown = ", ".join(
                    f"{split}={n}"
                    + (" (not in source)" if column in self.absent_columns.get(split, ()) else "")
                    for split, n in counts.items()
                )
                lines.append(f"  {column}: {shown}")
        return "\n".join(lines)


def _row(record: Record, report: BuildReport) -> dict[str, Any] | None:
    """The dataset row of a record, or None (counted in `report`) if it cannot be used."""
    if record.structure is None:
        reason = record.error or "unreadable"
    else:
        try:
            text = encode(record.structure, format=report.crystal_format)
            reason = None
        except ValueError as err:
            reason = f"{type(err).__name__}: {str(err).split(';')[0]}"
    if reason is not None:
        report.skipped[reason[:120]] += 1
        report.skipped_examples.append((record.material_id, reason))
        return None
    structure = record.structure
    try:
        spacegroup = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()
    except Exception:  # spglib gives up on some distorted cells; the row is still useful
        spacegroup = None
        report.no_spacegroup += 1
    composition = structure.composition
    row = {
        "material_id": record.material_id,
        "cif": record.cif if record.cif is not None else structure.to(fmt="cif"),
        "text": text,
        "formula": composition.reduced_formula,
        "full_formula": composition.formula.replace(" ", ""),
        "elements": sorted(el.symbol for el in composition.elements),
        "n_atoms": len(structure),
        "spacegroup": spacegroup,
        "crystal_format": report.crystal_format,
    }
    for key, value in record.properties.items():
        name = f"source_{key}" if key in COMPUTED_COLUMNS else key
        if name != key:
            report.renamed_columns[key] = name
        row[name] = value
    return row


def _rows(path: Path, report: BuildReport, desc: str) -> list[dict[str, Any]]:
    rows = [_row(record, report) for record in tqdm(iter_records(path), desc=desc, unit=" structures")]
    return [row for row in rows if row is not None]


def build_dataset(
    sources: str | Path | Mapping[str, str | Path],
    *,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 42,
    format: str = DEFAULT_FORMAT,
) -> tuple[DatasetDict, BuildReport]:
    """A train/validation/test `DatasetDict` of crystal text from one source (seeded split) or one per split.

    Columns: material_id, cif, text (canonical: no augmentation; in `format`, "xyz" or "wyckoff"), formula
    (reduced), full_formula, elements, n_atoms, spacegroup (spglib, symprec 0.1), crystal_format (`format`,
    so the rows say how to read `text`) and every property column of the sources. All
    splits share one schema (`unify_features`): a property one source lacks is a null column in that
    split (counted in `BuildReport.null_counts` / `absent_columns`), never zeros.
    """
    if isinstance(sources, Mapping):
        unknown = set(sources) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
        report = BuildReport({k: str(v) for k, v in sources.items()}, check_format(format))
        splits = {name: _rows(Path(src), report, name) for name, src in sources.items()}
    else:
        if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-9 or min(split_fractions) < 0:
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}"
            )
        report = BuildReport({"all": str(sources)}, check_format(format))
        rows = _rows(Path(sources), report, "reading")
        order = np.random.default_rng(seed).permutation(len(rows))
        bounds = np.round(np.cumsum(split_fractions) * len(rows)).astype(int)
        splits = {
            name: [rows[i] for i in order[start:stop]]
            for name, start, stop in zip(SPLITS, [0, *bounds[:2]], bounds, strict=True)
        }
    splits = {name: rows for name, rows in splits.items() if rows}
    columns = _columns(splits.values())
    dataset = unify_features(
        DatasetDict(
            {
                name: Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})
                for name, rows in splits.items()
            }
        )
    )
    report.rows = {name: len(ds) for name, ds in dataset.items()}
    report.null_counts = {
        name: {c: split.data.column(c).null_count for c in split.column_names}
        for name, split in dataset.items()
    }
    report.absent_columns = {
        name: [c for c in columns if not any(c in r for r in rows)] for name, rows in splits.items()
    }
    return dataset, report


def _columns(splits) -> list[str]:
    """The union of the rows' keys: the computed columns first, then the properties in first-seen order."""
    seen = dict.fromkeys(COMPUTED_COLUMNS)
    for rows in splits:
        for row in rows:
            seen.update(dict.fromkeys(row))
    return list(seen)


_NUMERIC = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_FLOATS = ("float16", "float32", "float64")


def _unify(column: str, types: dict[str, Any]) -> Any:
    """One feature type for a column typed differently by different splits (nulls take the other type)."""
    known = {split: t for split, t in types.items() if not (isinstance(t, Value) and t.dtype == "null")}
    if not known:
        return Value("null")
    distinct = []
    for t in known.values():
        if t not in distinct:
            distinct.append(t)
    if len(distinct) == 1:
        return distinct[0]
    if all(isinstance(t, Value) for t in distinct):
        dtypes = {t.dtype for t in distinct}
        if dtypes <= {*_NUMERIC, *_FLOATS}:
            return Value("float64") if dtypes & set(_FLOATS) else Value("int64")
        return Value("string")
    raise DataFormatError(
        f"column {column!r} has incompatible types in different splits: "
        + ", ".join(f"{split}: {t}" for split, t in known.items())
    )


def unify_features(dataset: DatasetDict) -> DatasetDict:
    """`dataset` with one schema for all splits: the union of their columns in one order, missing columns
    added as nulls (never zeros), and each column cast to one type (a null-only column takes the type it
    has elsewhere; integers and floats meet as float64; other mixed scalars as strings)."""
    if not dataset:
        return dataset
    columns = list(dict.fromkeys(c for split in dataset.values() for c in split.column_names))
    features = Features(
        {
            c: _unify(c, {name: split.features[c] for name, split in dataset.items() if c in split.features})
            for c in columns
        }
    )
    out = {}
    for name, split in dataset.items():
        for c in columns:
            if c not in split.column_names:
                split = split.add_column(c, [None] * len(split))
        split = split.select_columns(columns)
        out[name] = split if split.features == features else split.cast(features)
    return DatasetDict(out)


def save_dataset(dataset: DatasetDict, out_dir: str | Path, card: str | None = None) -> Path:
    """Write `dataset` Hub-shaped: one parquet file per split under data/, and the card as README.md.

    All splits are written with one schema (`unify_features`), so `datasets.load_dataset(out_dir)` can read
    them together.
    """
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, split in unify_features(dataset).items():
        split.to_parquet(out / "data" / f"{name}-00000-of-00001.parquet")
    if card is not None:
        (out / "README.md").write_text(card)
    return out


def verify_saved_dataset(out_dir: str | Path, dataset: DatasetDict) -> DatasetDict:
    """Load `out_dir` back with `load_crystal_dataset` and check it holds `dataset`'s splits, row counts and
    columns; raises `DataFormatError` (saying what differs) if it does not load or differs."""
    try:
        loaded = load_crystal_dataset(out_dir)
    except Exception as err:  # datasets raises many types (CastError, DatasetGenerationError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataFormatError(
            f"{out_dir} was written but load_crystal_dataset cannot read it back: {type(err).__name__}: {reason}"
        ) from err
    expected = {name: (len(split), split.column_names) for name, split in dataset.items()}
    found = {name: (len(split), split.column_names) for name, split in loaded.items()}
    if expected != found:
        raise DataFormatError(
            f"{out_dir} loads back differently from what was built: expected (rows, columns) {expected}, "
            f"loaded {found}"
        )
    return loaded


def load_crystal_dataset(path_or_repo_id: str | Path, split: str | None = None, revision: str | None = None):
    """A crystal dataset from a local folder (as `save_dataset` writes it) or a Hub dataset id.

    A Hub dataset goes through the local Hub cache (`hf-crystal pull --repo-type dataset` fills it), so
    it loads offline once downloaded.
    """
    folder = Path(path_or_repo_id)
    if not folder.is_dir():
        folder = snapshot(str(path_or_repo_id), repo_type="dataset", revision=revision)
    return load_dataset(str(folder), split=split)
