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

__all__ = ["GENERATION_TASK", "INFILL_TASK", "MissingDefaultModel", "install_registration_hook", "register"]

GENERATION_TASK = "crystal-generation"
INFILL_TASK = "crystal-infill"
_PIPELINES_MODULE = "transformers.pipelines"


class MissingDefaultModel:
    """Stands in for the `(repo_id, revision)` default of a task that has no default model yet.

    transformers unpacks the task default when `pipeline(task)` gets no model; unpacking this raises
    an error that says what to pass instead of a bare `KeyError: 'default'`.
    """

    def __init__(self, task: str):
        self.task = task

    def __contains__(self, key) -> bool:  # `register_pipeline` asks whether this is already {"model": ...}
        return False

    def __iter__(self):
        raise ValueError(
            f'pipeline("{self.task}") needs a model: pass model="USER/REPO" or a local folder (a causal LM '
            "trained on crystal text, or a LoRA adapter on one). Train one with `hf-crystal train base` "
            "(from scratch) or `hf-crystal train lora --model BASE` (an adapter on any causal LM)."
        )


def register() -> None:
    """Register both tasks with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent)."""
    from transformers import AutoModelForCausalLM
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
                pt_model=AutoModelForCausalLM,
                default=MissingDefaultModel(task),
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
