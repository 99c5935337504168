"""Cards and pushes: everything hf-crystal writes to the Hugging Face Hub goes through here."""

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
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData

from hf_crystal import embedded
from hf_crystal.data import COMPUTED_COLUMNS, BuildReport
from hf_crystal.hub_access import UnsafeWeightsError, offline_errors, snapshot

__all__ = [
    "CHECKPOINT_SUBDIR",
    "FOLDER_KINDS",
    "MODEL_CARD_KINDS",
    "HubFolderError",
    "TAGS",
    "MetricsFormatError",
    "PushError",
    "card_with_metrics",
    "update_card",
    "folder_kind",
    "load_crystal_model",
    "pull",
    "push_folder",
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
        splits=list(report.rows),
        null_columns=report.null_columns(),
        absent_columns=report.absent_columns,
    )


#: Hub-shaped folder kinds hf-crystal writes: (repo type, files that must be there; globs allowed).
FOLDER_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dataset": ("dataset", ("data/*.parquet", "README.md")),
    "refiner": ("model", ("model_index.json", "model/config.json", "scheduler/scheduler_config.json")),
    "adapter": ("model", ("adapter_config.json", "adapter_model.safetensors")),
    "base": ("model", ("config.json", "*.safetensors", "tokenizer_config.json")),
    "space": ("space", ("README.md", "app.py")),  # a Space: its README's YAML names the sdk (e.g. space/)
}
#: Training runs keep checkpoints in this subfolder of their Hub-shaped output folder.
CHECKPOINT_SUBDIR = "checkpoints"
#: Never uploaded from a folder: training checkpoints (optimizer pickles) and the loss log.
PUSH_IGNORE = [f"{CHECKPOINT_SUBDIR}/*", "train_log.json"]


class HubFolderError(ValueError):
    """A folder that is not one of the Hub-shaped kinds hf-crystal pushes."""


class PushError(OSError):
    """A push that did not complete; nothing of it was committed."""


def folder_kind(folder: str | Path) -> str:
    """The kind of a Hub-shaped folder (a key of `FOLDER_KINDS`); HubFolderError says what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f"{folder} is not a folder")
    missing = {}
    for kind, (_, required) in FOLDER_KINDS.items():
        absent = [pattern for pattern in required if not any(folder.glob(pattern))]
        if not absent:
            return kind
        missing[kind] = absent
    details = "; ".join(f"{kind} lacks {', '.join(files)}" for kind, files in missing.items())
    raise HubFolderError(
        f"{folder} is not a dataset, base model, adapter, refiner or Space folder: {details}"
    )


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str | None = None,
    private: bool = False,
    ignore_patterns: Sequence[str] = (),
    **kw,
):
    """Upload a Hub-shaped folder (`folder_kind`) to `repo_id` as one commit; returns the `CommitInfo`.

    The repo (and the `revision` branch) is created if needed; the repo type follows the folder's kind
    unless given. A model folder without a card gets one rendered for its kind. Checkpoints and the loss
    log are never uploaded (`PUSH_IGNORE`).
    """
    kind = folder_kind(folder)
    repo_type = repo_type or FOLDER_KINDS[kind][0]
    if repo_type != FOLDER_KINDS[kind][0]:
        raise HubFolderError(f"{folder} is a {kind} folder: push it as repo type {FOLDER_KINDS[kind][0]!r}")
    if not (Path(folder) / "README.md").exists():
        render_model_card(kind, repo_id=repo_id).save(Path(folder) / "README.md")
    space_sdk = _space_sdk(folder) if repo_type == "space" else None
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    try:
        return api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            ignore_patterns=[*PUSH_IGNORE, *ignore_patterns],
            **kw,
        )
    except Exception as err:  # huggingface_hub has already retried what it retries (transient errors)
        raise PushError(
            f"pushing {folder} to {repo_id} failed ({type(err).__name__}: {err}). Nothing was committed: a Hub "
            f"commit is atomic, so {repo_id} is unchanged (large files already uploaded are not sent again). "
            "Fix the cause and push again."
        ) from err


def _space_sdk(folder: str | Path) -> str:
    """The `sdk` a Space folder's README.md names in its YAML header (the Hub needs it to create the Space)."""
    from huggingface_hub import metadata_load

    sdk = (metadata_load(Path(folder) / "README.md") or {}).get("sdk")
    if not sdk:
        raise HubFolderError(f"{folder}/README.md names no sdk in its YAML header (e.g. sdk: gradio)")
    return sdk


def pull(repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> Path:
    """Download a repo into the local Hub cache (for offline use later) and return its folder there."""
    return snapshot(repo_id, repo_type=repo_type, revision=revision)


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


_EVAL_START, _EVAL_END = "<!-- hf-crystal:evaluation -->", "<!-- /hf-crystal:evaluation -->"


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
        _EVAL_START,
        "## Evaluation results",
        "",
        f"Measured on {results[0].dataset_name} ({'; '.join(f for f in facts if f)}):",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {r.metric_name} | {r.metric_value:.4g} |" for r in results),
        _EVAL_END,
    ]
    section = "\n".join(lines)
    text = card.text
    if _EVAL_START in text and _EVAL_END in text:
        head, rest = text.split(_EVAL_START, 1)
        text = head + section + rest.split(_EVAL_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    return ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")


def update_card(
    folder_or_repo_id: str | Path,
    metrics: str | Path | Mapping[str, Any],
    *,
    dataset_id: str | None = None,
    push: bool = False,
    source: str = "",
) -> ModelCard:
    """Put `metrics` on the card of a local model folder (README.md rewritten) or of a Hub model repo.

    A Hub repo's card is uploaded back only with `push=True` (one commit). Returns the updated card.
    """
    folder = Path(folder_or_repo_id)
    if folder.is_dir():
        readme = folder / "README.md"
        kind = folder_kind(folder)
        if kind == "dataset":
            raise HubFolderError(f"{folder} is a dataset: evaluation results go on a model's card")
        card = ModelCard.load(readme) if readme.exists() else render_model_card(kind, repo_id=folder.name)
        card = card_with_metrics(card, metrics, dataset_id=dataset_id, source=source)
        card.save(readme)
        return card
    card = card_with_metrics(
        ModelCard.load(str(folder_or_repo_id)), metrics, dataset_id=dataset_id, source=source
    )
    if push:
        card.push_to_hub(str(folder_or_repo_id), commit_message="Evaluation results from hf-crystal")
    return card


def load_crystal_model(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    merge: bool = False,
    **model_kwargs,
):
    """(model, tokenizer) from a full model or a LoRA adapter, as a local folder or a Hub id.

    Hub ids of the models embedded in the package (`hf_crystal.embedded`) load from their folders, offline,
    unless `revision` names another revision than "main"; such a model is named by its Hub id
    (`model.name_or_path`). For an adapter, the base comes from its adapter_config (at the base revision
    recorded there; an embedded base from the package) and `revision` pins the adapter only; the adapter's
    own tokenizer is used when it ships one, and `merge=True` merges it into the base (a plain model, faster
    to run). (transformers' `pipeline(model=ADAPTER, revision=R)` applies R to the base repo too and always
    takes the base's tokenizer: pass the result of this function to `pipeline` instead.)
    Weights load only from safetensors (`UnsafeWeightsError` otherwise) unless `allow_pickle`; offline,
    a repo missing from the cache raises `HubOfflineError` (see `hf_crystal.hub_access`).
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import find_adapter_config_file

    folder = embedded.embedded_folder(path_or_repo_id, revision)
    source, revision = (str(folder), None) if folder is not None else (str(path_or_repo_id), revision)
    model_kwargs = {"use_safetensors": None if allow_pickle else True, **model_kwargs}
    with offline_errors(source):
        adapter = find_adapter_config_file(source, revision=revision) is not None
        weights = (
            ("adapter_model.safetensors",)
            if adapter
            else ("model.safetensors", "model.safetensors.index.json")
        )
        if not allow_pickle and not any(_has_file(source, revision, name) for name in weights):
            pickles = (
                ("adapter_model.bin",) if adapter else ("pytorch_model.bin", "pytorch_model.bin.index.json")
            )
            if any(_has_file(source, revision, name) for name in pickles):
                raise UnsafeWeightsError(_PICKLE_ONLY.format(source=source))
        if not adapter:
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        else:
            # As peft's AutoPeftModelForCausalLM, with the base's Hub id resolved like any other.
            config = PeftConfig.from_pretrained(source, revision=revision)
            base_source, base_revision = embedded.resolve(config.base_model_name_or_path, config.revision)
            with offline_errors(base_source):
                base = AutoModelForCausalLM.from_pretrained(
                    base_source, revision=base_revision, **model_kwargs
                )
            own_tokenizer = _has_file(source, revision, "tokenizer_config.json")
            tokenizer = (
                AutoTokenizer.from_pretrained(source, revision=revision)
                if own_tokenizer
                else AutoTokenizer.from_pretrained(base_source, revision=base_revision)
            )
            if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
                base.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(base, source, revision=revision, config=config)
            if merge:
                model = model.merge_and_unload()
    if folder is not None:
        model.name_or_path = model.config.name_or_path = str(path_or_repo_id)
    return model, tokenizer


_PICKLE_ONLY = (
    "{source} has no safetensors weights, only pickle files, which can run code when loaded; hf-crystal "
    "loads safetensors only. If you trust the source, pass allow_pickle=True (hf-crystal: --allow-pickle)."
)


def _has_file(source: str, revision: str | None, name: str) -> bool:
    from transformers.utils import cached_file

    return (
        cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False) is not None
    )
