"""Pushes and pulls: every Hub-shaped folder hf-crystal writes reaches the Hugging Face Hub through here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard

from hf_crystal.cards import card_with_metrics, card_with_section, render_model_card
from hf_crystal.hub_access import snapshot

__all__ = [
    "CHECKPOINT_SUBDIR",
    "FOLDER_KINDS",
    "PUSH_IGNORE",
    "HubFolderError",
    "PushError",
    "folder_kind",
    "pull",
    "push_folder",
    "update_card",
]


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


def _with_sections(card: ModelCard, sections: Mapping[str, str] | None) -> ModelCard:
    for name, markdown in (sections or {}).items():
        card = card_with_section(card, name, markdown)
    return card


def update_card(
    folder_or_repo_id: str | Path,
    metrics: str | Path | Mapping[str, Any],
    *,
    dataset_id: str | None = None,
    push: bool = False,
    source: str = "",
    sections: Mapping[str, str] | None = None,
) -> ModelCard:
    """Put `metrics` on the card of a local model folder (README.md rewritten) or of a Hub model repo.

    `sections` (name -> Markdown) are written too, each replacing its earlier version (`card_with_section`).
    A Hub repo's card is uploaded back only with `push=True` (one commit). Returns the updated card.
    """
    folder = Path(folder_or_repo_id)
    if folder.is_dir():
        readme = folder / "README.md"
        kind = folder_kind(folder)
        if kind == "dataset":
            raise HubFolderError(f"{folder} is a dataset: evaluation results go on a model's card")
        card = ModelCard.load(readme) if readme.exists() else render_model_card(kind, repo_id=folder.name)
        card = _with_sections(
            card_with_metrics(card, metrics, dataset_id=dataset_id, source=source), sections
        )
        card.save(readme)
        return card
    card = card_with_metrics(
        ModelCard.load(str(folder_or_repo_id)), metrics, dataset_id=dataset_id, source=source
    )
    card = _with_sections(card, sections)
    if push:
        card.push_to_hub(str(folder_or_repo_id), commit_message="Evaluation results from hf-crystal")
    return card
