"""The models that ship inside the package, used in place of their Hub repos: offline, with no cache.

`models/` in the repository (installed as the package data `hf_crystal.models`) holds Hub-shaped folders,
each named as the last part of its Hub id, exactly as `hf-crystal push` uploads them. Everything in hf-crystal
that loads a model, adapter or refiner by Hub id (`hf_crystal.loading.load_crystal_model`,
`CrystalRefinerPipeline.from_pretrained`, the pipeline task defaults, the CLI) first calls `resolve`: an
embedded id at the default revision becomes its folder, so the default adapter's reference to its base
(`adapter_config.json`: `base_model_name_or_path`) resolves with `HF_HUB_OFFLINE=1` too. An explicit revision
other than "main" still goes to the Hub, and a local folder of the same name wins, as in transformers.

The bundle is `BASE_MODEL`, `DEFAULT_MODEL` (a LoRA adapter on it) and `DEFAULT_REFINER` (a FlowLLM refiner
trained on the adapter's samples), and the Wyckoff-text model `WYCKOFF_MODEL` on `WYCKOFF_BASE`; `EMBEDDED` says
which base and refiner each entry comes with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "BASE_MODEL",
    "DEFAULT_MODEL",
    "DEFAULT_REFINER",
    "EMBEDDED",
    "EmbeddedModel",
    "EmbeddedModelError",
    "WYCKOFF_BASE",
    "WYCKOFF_MODEL",
    "WYCKOFF_REFINER",
    "embedded_folder",
    "models_dir",
    "refiner_for",
    "resolve",
]

# The bundle (Hub ids; folder names are their last parts): change a model here.
BASE_MODEL = "hf-crystal/crystal-llm-mp20-small"
DEFAULT_MODEL = "hf-crystal/crystal-lora-mp20-small"
DEFAULT_REFINER = "hf-crystal/crystal-refiner-mp20-lora"
# The Wyckoff-text model (docs/wyckoff_text.md): base and adapter; it refines with the default refiner, which works
# on structures whatever text wrote them. WYCKOFF_REFINER, trained on its samples, ships beside it.
WYCKOFF_BASE = "hf-crystal/crystal-llm-mp20-wyckoff-small"
WYCKOFF_MODEL = "hf-crystal/crystal-lora-mp20-wyckoff-small"
WYCKOFF_REFINER = "hf-crystal/crystal-refiner-mp20-wyckoff"


class EmbeddedModelError(Exception):
    """An embedded model that cannot be loaded (e.g. its folder is missing from this installation).

    Not an `OSError`: transformers' `pipeline()` catches those from a model class and falls back to loading
    the bare base in place of the default adapter.
    """


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded Hub repo.

    Args:
        repo_id: Its Hub id.
        base: Hub id of the base an adapter is loaded on (its `adapter_config.json` names the same); the folder
            transformers' `pipeline()` reads the config and tokenizer from when the adapter is a task default.
        refiner: Hub id of the refiner that comes with it: a crystal-generation pipeline on this model refines
            with it unless given `refiner=None` (`refiner_for`).
    """

    repo_id: str
    base: str | None = None
    refiner: str | None = None

    @property
    def folder(self) -> Path:
        return models_dir() / self.repo_id.split("/")[-1]


EMBEDDED: dict[str, EmbeddedModel] = {
    entry.repo_id: entry
    for entry in (
        EmbeddedModel(BASE_MODEL),
        EmbeddedModel(DEFAULT_MODEL, base=BASE_MODEL, refiner=DEFAULT_REFINER),
        EmbeddedModel(DEFAULT_REFINER),
        EmbeddedModel(WYCKOFF_BASE),
        EmbeddedModel(WYCKOFF_MODEL, base=WYCKOFF_BASE, refiner=DEFAULT_REFINER),
        EmbeddedModel(WYCKOFF_REFINER),
    )
}


@functools.cache
def models_dir() -> Path:
    """The folder holding the embedded models (the installed package data `hf_crystal.models`)."""
    return Path(str(resources.files("hf_crystal.models")))


def embedded_folder(path_or_repo_id: str | Path, revision: str | None = None) -> Path | None:
    """The folder of the embedded model `path_or_repo_id` at `revision`, or None.

    None for a local path, an id that is not embedded, a revision other than None or "main", or an entry
    whose folder is not in this installation.
    """
    entry = EMBEDDED.get(str(path_or_repo_id))
    if entry is None or revision not in (None, "main") or Path(path_or_repo_id).exists():
        return None
    return entry.folder if entry.folder.is_dir() else None


def resolve(path_or_repo_id: str | Path, revision: str | None = None) -> tuple[str, str | None]:
    """`(source, revision)` to load from: an embedded model's folder (and no revision), else the arguments."""
    folder = embedded_folder(path_or_repo_id, revision)
    return (str(folder), None) if folder is not None else (str(path_or_repo_id), revision)


def refiner_for(model, revision: str | None = None) -> str | None:
    """Hub id of the refiner that comes with `model`, or None.

    `model` is a Hub id (at `revision`) or a model loaded by `hf_crystal.loading.load_crystal_model`, which names
    an embedded model by its Hub id (`name_or_path`). Only the embedded entries name a refiner.
    """
    name = model if isinstance(model, str | Path) else getattr(model, "name_or_path", None)
    if name is None or embedded_folder(name, revision) is None:
        return None
    return EMBEDDED[str(name)].refiner
