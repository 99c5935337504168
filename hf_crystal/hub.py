"""Cards and pushes: everything hf-crystal writes to the Hugging Face Hub goes through here."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from hf_crystal.data import COMPUTED_COLUMNS, BuildReport

__all__ = ["TAGS", "push_folder", "render_dataset_card", "template_path"]

#: Tags on every card hf-crystal writes.
TAGS = ["crystal-generation", "materials-science", "crystal-structures", "hf-crystal"]


def template_path(name: str) -> str:
    """Path of a card template shipped in `model_cards/` (installed as package `hf_crystal.model_cards`)."""
    return str(resources.files("hf_crystal.model_cards") / name)


def _size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "n>1M"


def render_dataset_card(
    dataset: DatasetDict,
    report: BuildReport,
    *,
    repo_id: str = "path/to/dataset",
    pretty_name: str | None = None,
    license: str = "other",
) -> DatasetCard:
    """A dataset card with sources, split counts, skipped entries and element / size statistics."""
    n_total = sum(len(split) for split in dataset.values())
    n_atoms = np.concatenate([split["n_atoms"] for split in dataset.values()])
    element_counts = Counter(
        el for split in dataset.values() for elements in split["elements"] for el in elements
    )
    spacegroups = Counter(sg for split in dataset.values() for sg in split["spacegroup"] if sg is not None)
    first = next(iter(dataset.values()))
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name or f"{repo_id.split('/')[-1]} crystal text",
        size_categories=_size_category(n_total),
        task_categories=["text-generation"],
        tags=TAGS,
    )
    return DatasetCard.from_template(
        card_data,
        template_path=template_path("dataset_card.md"),
        pretty_name=card_data.pretty_name,
        repo_id=repo_id,
        sources=report.sources,
        rows=report.rows,
        n_skipped=sum(report.skipped.values()),
        skipped=report.skipped.most_common(),
        no_spacegroup=report.no_spacegroup,
        renamed_columns=report.renamed_columns,
        n_atoms={"min": int(n_atoms.min()), "median": float(np.median(n_atoms)), "max": int(n_atoms.max())},
        n_elements=len(element_counts),
        top_elements=[(el, f"{n / n_total:.1%}") for el, n in element_counts.most_common(10)],
        top_spacegroups=spacegroups.most_common(5),
        property_columns=[c for c in first.column_names if c not in COMPUTED_COLUMNS],
    )


def push_folder(
    folder: str | Path, repo_id: str, *, repo_type: str = "model", private: bool = False, **kw
) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, **kw).commit_url
