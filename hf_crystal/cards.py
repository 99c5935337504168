"""Model and dataset cards: rendering from the templates in `model_cards/`, and evaluation results on them."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from hf_crystal.data import COMPUTED_COLUMNS, BuildReport

__all__ = [
    "MODEL_CARD_KINDS",
    "TAGS",
    "MetricsFormatError",
    "card_with_metrics",
    "card_with_section",
    "read_metrics",
    "render_dataset_card",
    "render_model_card",
    "template_path",
]

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
    """A dataset card with sources, split counts, skipped entries, null cells per column and split (a property
    one source lacks is null in its split), and element / size statistics."""
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
        crystal_format=report.crystal_format,
    )
    return DatasetCard.from_template(
        card_data,
        template_path=template_path("dataset_card.md"),
        pretty_name=card_data.pretty_name,
        repo_id=repo_id,
        sources=report.sources,
        crystal_format=report.crystal_format,
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
        splits=list(report.rows),
        null_columns=report.null_columns(),
        absent_columns=report.absent_columns,
    )


# Model cards: base model, LoRA adapter, refiner (templates in model_cards/).

#: Card kinds: template file and the `library_name` that loads the model.
MODEL_CARD_KINDS = {
    "base": ("base_model_card.md", "transformers"),
    "adapter": ("adapter_card.md", "peft"),
    "refiner": ("refiner_card.md", "diffusers"),
}


# Keys of a flat metrics.json that describe the evaluation rather than measure the model (besides "n_*").
_CONTEXT_KEYS = ("hull", "hull_entries")


class MetricsFormatError(ValueError):
    """A metrics JSON that cannot be read into card evaluation results."""


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = value
    return flat


def read_metrics(metrics: str | Path | Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """(metric name -> number, context) from a metrics JSON file or mapping.

    Either the flat ``metrics.json`` of `hf-crystal evaluate` (`compute_metrics`) (counts such as
    ``n_samples`` and the ``hull`` used are context, not metrics), or
    ``{"metrics": {...}, "dataset": name or {"name", "type", "split"}, "n_samples": n, "note": s}``.
    Nested mappings become "outer/inner" names; anything that is not a finite number (None, NaN,
    strings, lists) is not a measurement and is left out.
    """
    if not isinstance(metrics, Mapping):
        try:
            metrics = json.loads(Path(metrics).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MetricsFormatError(f"cannot read metrics JSON {metrics}: {err}") from None
        if not isinstance(metrics, Mapping):
            raise MetricsFormatError("a metrics JSON must hold an object")
    wrapped = isinstance(metrics.get("metrics"), Mapping)
    dataset = metrics.get("dataset") if wrapped else None
    context: dict[str, Any] = {
        "dataset": {"name": dataset} if isinstance(dataset, str) else dict(dataset or {})
    }
    context.update({k: metrics[k] for k in ("n_samples", "note", "hull") if metrics.get(k) is not None})
    values = _flatten(metrics["metrics"] if wrapped else metrics)
    for key in [k for k in values if k.startswith("n_") or k in _CONTEXT_KEYS]:
        del values[key]
    return values, context


def _eval_results(
    values: dict[str, float], dataset: Mapping[str, Any], fallback_dataset: str
) -> list[EvalResult]:
    name = dataset.get("name") or dataset.get("type") or fallback_dataset
    return [
        EvalResult(
            task_type="text-generation",
            task_name="crystal-generation",
            dataset_type=dataset.get("type") or name,
            dataset_name=name,
            dataset_split=dataset.get("split"),
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for metric, value in values.items()
    ]


def render_model_card(
    kind: str,
    *,
    repo_id: str,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    training_results: Mapping[str, Any] | None = None,
    metrics: str | Path | Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    **template_kwargs: Any,
) -> ModelCard:
    """A model card of `kind` ("base", "adapter" or "refiner") with Hub metadata.

    Metadata: base_model, datasets, library_name, license, pipeline_tag, tags (`TAGS` + `tags`),
    hyperparameters, and eval_results from `metrics` (see `read_metrics`) when given. Fields that are
    None or empty are left out, so a card never shows a number that was not measured.
    `template_kwargs` go to the template (e.g. preset, n_parameters, lora, usage).
    """
    if kind not in MODEL_CARD_KINDS:
        raise ValueError(f"unknown card kind {kind!r}; choose one of {list(MODEL_CARD_KINDS)}")
    if base_model is not None and Path(base_model).exists():
        raise ValueError(f"base_model must be a Hub id, not the local path {base_model!r}")
    template, library_name = MODEL_CARD_KINDS[kind]
    model_name = repo_id.split("/")[-1]
    values, context = read_metrics(metrics) if metrics is not None else ({}, {})
    eval_results = _eval_results(values, context.get("dataset", {}), datasets[0] if datasets else model_name)
    note = "; ".join(
        part
        for part in (
            f"{context['n_samples']} samples" if "n_samples" in context else "",
            f"hull: {context['hull']}" if "hull" in context else "",
            context.get("note", ""),
        )
        if part
    )
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=list(datasets) or None,
        library_name=library_name,
        license=license,
        pipeline_tag="text-generation" if kind != "refiner" else None,
        tags=[*TAGS, *(t for t in tags if t not in TAGS)],
        hyperparameters=dict(hyperparameters) if hyperparameters else None,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=template_path(template),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        datasets=list(datasets),
        hyperparameters=dict(hyperparameters or {}),
        training_results=dict(training_results or {}),
        metrics=[(r.metric_name, r.metric_value) for r in eval_results],
        metrics_dataset=eval_results[0].dataset_name if eval_results else None,
        metrics_note=note,
        **template_kwargs,
    )


def card_with_metrics(
    card: ModelCard,
    metrics: str | Path | Mapping[str, Any],
    *,
    dataset_id: str | None = None,
    source: str = "",
) -> ModelCard:
    """`card` with the numbers of `metrics` (see `read_metrics`) as its `model-index` and an evaluation section.

    The numbers come only from the metrics; `source` (e.g. the metrics file or the command) and the sample
    count are stated beside them. Rerunning replaces the section and the eval results instead of adding.
    """
    values, context = read_metrics(metrics)
    if not values:
        raise MetricsFormatError("the metrics hold no number to put on the card")
    model_name = card.data.model_name or "model"
    fallback = dataset_id or (card.data.datasets[0] if card.data.datasets else model_name)
    results = _eval_results(values, context.get("dataset", {}), fallback)
    card.data.model_name = model_name
    card.data.eval_results = results
    facts = [f"{context['n_samples']} samples" if "n_samples" in context else "", source]
    facts += [f"hull: {context['hull']}" if "hull" in context else "", context.get("note", "")]
    lines = [
        "## Evaluation results",
        "",
        f"Measured on {results[0].dataset_name} ({'; '.join(f for f in facts if f)}):",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {r.metric_name} | {r.metric_value:.4g} |" for r in results),
    ]
    return card_with_section(card, "evaluation", "\n".join(lines))


def card_with_section(card: ModelCard, name: str, markdown: str) -> ModelCard:
    """`card` with `markdown` as its section `name`, between `<!-- hf-crystal:name -->` markers: a rerun replaces
    the section, a new one goes at the end."""
    start, end = f"<!-- hf-crystal:{name} -->", f"<!-- /hf-crystal:{name} -->"
    section = f"{start}\n{markdown.strip()}\n{end}"
    text = card.text
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    return ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
