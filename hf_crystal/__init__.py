"""hf-crystal: crystal structures as text for language models on the Hugging Face stack."""

from hf_crystal.text import CrystalParseError, DisorderedStructureError, decode, encode, try_decode

__version__ = "0.1.0"

__all__ = ["CrystalParseError", "DisorderedStructureError", "decode", "encode", "try_decode"]
