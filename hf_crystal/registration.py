"""Registration of the pipeline tasks "crystal-generation" and "crystal-infill" with transformers.

Registering needs `transformers.pipelines`, which takes seconds to import (torch included); the CLI
and most library modules never need it. So `import hf_crystal` registers through a post-import hook:
if `transformers.pipelines` is already imported the tasks are registered at once, otherwise a
one-shot `sys.meta_path` finder registers them right after `transformers.pipelines` finishes
importing (which `from transformers import pipeline` does on first use). `hf-crystal --help` thus
starts without torch, while `import hf_crystal; pipeline("crystal-generation", model=...)` works.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from hf_crystal.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModelError

__all__ = [
    "GENERATION_TASK",
    "INFILL_TASK",
    "CrystalModelForCausalLM",
    "EmbeddedDefault",
    "install_registration_hook",
    "register",
]

GENERATION_TASK = "crystal-generation"
INFILL_TASK = "crystal-infill"
_PIPELINES_MODULE = "transformers.pipelines"


class EmbeddedDefault(str):
    """A task default as transformers' `pipeline()` without a model uses it: `(model, revision)`, `model` a string.

    `pipeline()` reads the config and tokenizer from that string as a local folder, then loads the model with
    the task's model class: this string is the folder of the embedded entry's base (`EmbeddedModel.base`; the
    entry's own folder for a full model), `model_id` the embedded model it stands for, which
    `CrystalModelForCausalLM` loads (an adapter on that base, merged). Nothing is asked of the Hub. An embedded
    adapter that ships a tokenizer must ship its base's (tests/test_embedded.py checks).
    """

    model_id: str

    def __new__(cls, model_id: str) -> EmbeddedDefault:
        entry = EMBEDDED[model_id]
        self = super().__new__(cls, str(EMBEDDED[entry.base or model_id].folder))
        self.model_id = model_id
        return self

    def __getnewargs__(self) -> tuple[str]:  # copies (transformers deep-copies its loading options)
        return (self.model_id,)


class CrystalModelForCausalLM:
    """The model class the crystal tasks register (`pt_model`): `AutoModelForCausalLM`, except for a task default
    (`EmbeddedDefault`), loaded with `hf_crystal.loading.load_crystal_model` (embedded base, adapter merged)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from transformers import AutoModelForCausalLM

        if not isinstance(pretrained_model_name_or_path, EmbeddedDefault):
            return AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        from hf_crystal.loading import load_crystal_model

        model_id, revision = pretrained_model_name_or_path.model_id, kwargs.get("revision")
        folder = EMBEDDED[model_id].folder
        if revision in (None, "main") and not folder.is_dir():  # never the Hub for the default
            raise EmbeddedModelError(
                f"the default model {model_id} is not in this installation ({folder} is missing): "
                'pass model="USER/REPO" or a local folder'
            )
        options = {key: kwargs[key] for key in ("dtype", "device_map") if key in kwargs}
        try:  # an explicit revision other than "main" loads the adapter from the Hub
            return load_crystal_model(model_id, revision, merge=True, **options)[0]
        except Exception as err:  # an OSError would make pipeline() load the bare base instead
            raise EmbeddedModelError(f"the default model {model_id} could not be loaded: {err}") from err


def register() -> None:
    """Register both tasks with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent), both with the embedded
    `DEFAULT_MODEL` as their default (crystal-generation adds its refiner: see `CrystalGenerationPipeline`)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_crystal.pipeline_crystal import CrystalGenerationPipeline
    from hf_crystal.pipeline_infill import CrystalInfillPipeline

    for task, pipeline_class in (
        (GENERATION_TASK, CrystalGenerationPipeline),
        (INFILL_TASK, CrystalInfillPipeline),
    ):
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(
                task,
                pipeline_class=pipeline_class,
                pt_model=CrystalModelForCausalLM,
                default=(EmbeddedDefault(DEFAULT_MODEL), None),
            )


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the wrapped loader, then `register()`; other attributes are the wrapped loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        register()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PipelinesImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder: wraps the loader of `transformers.pipelines` in a `_RegisteringLoader`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PIPELINES_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the find_spec below from coming back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install_registration_hook() -> None:
    """Register now if `transformers.pipelines` is imported, else when it gets imported."""
    if _PIPELINES_MODULE in sys.modules:
        register()
    elif not any(isinstance(finder, _PipelinesImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PipelinesImportHook())
