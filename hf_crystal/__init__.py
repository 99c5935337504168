"""hf-crystal: crystal structures as text for language models on the Hugging Face stack.

Importing the package registers the transformers pipeline tasks "crystal-generation" and
"crystal-infill" (see `hf_crystal.registration`: on first import of `transformers.pipelines`, so that
the command line starts without torch). The public names below load on first access.
"""

import importlib

from hf_crystal.registration import GENERATION_TASK, INFILL_TASK, install_registration_hook

__version__ = "0.1.0"

_LAZY = {
    "CrystalGenerationPipeline": "hf_crystal.pipeline_crystal",
    "CrystalInfillPipeline": "hf_crystal.pipeline_infill",
    "CrystalParseError": "hf_crystal.text",
    "DisorderedStructureError": "hf_crystal.text",
    "decode": "hf_crystal.text",
    "encode": "hf_crystal.text",
    "try_decode": "hf_crystal.text",
}

__all__ = ["GENERATION_TASK", "INFILL_TASK", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_crystal' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


install_registration_hook()
