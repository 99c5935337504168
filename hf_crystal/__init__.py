"""hf-crystal: crystal structures as text for language models on the Hugging Face stack.

Importing the package registers the transformers pipeline task "crystal-generation".
"""

from hf_crystal.pipeline_crystal import TASK, CrystalGenerationPipeline
from hf_crystal.text import CrystalParseError, DisorderedStructureError, decode, encode, try_decode

__version__ = "0.1.0"

__all__ = [
    "TASK",
    "CrystalGenerationPipeline",
    "CrystalParseError",
    "DisorderedStructureError",
    "decode",
    "encode",
    "try_decode",
]
