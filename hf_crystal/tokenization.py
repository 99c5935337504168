"""Crystal tokenizer for models trained from scratch: a few hundred tokens, one per symbol that matters.

The vocabulary: the special tokens, every printable ASCII character (so any ASCII text round-trips),
every element symbol and every word of the task prompts. A regex pre-tokenizer cuts
text into exactly these pieces (words and element symbols longest first, then single characters) and
a WordLevel model maps each piece to its id; the Fuse decoder glues pieces back without spaces, so
``decode(encode(text)) == text`` for every ASCII text, prompts and crystals included. Digits are
single tokens (as LLaMA splits numbers), and so are ".", "-", " " and "\\n". No BOS is added by default (prompts begin
with a fixed header); characters outside ASCII become the unknown token.
"""

from __future__ import annotations

import re
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_crystal.prompts import (
    CONDITIONS,
    GENERATION_HEADER,
    GENERATION_INSTRUCTION,
    INFILL_HEADER,
    INFILL_INSTRUCTION,
    MASK,
)
from hf_crystal.text import ELEMENT_SYMBOLS

__all__ = [
    "SPECIAL_TOKENS",
    "build_crystal_tokenizer",
    "crystal_vocabulary",
    "prepare_for_batched_generation",
]

#: Special tokens by role; the pad token has id 0.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": MASK,
}
_PROMPT_TEXTS = (
    GENERATION_HEADER,
    GENERATION_INSTRUCTION,
    INFILL_HEADER,
    INFILL_INSTRUCTION,
    *CONDITIONS.values(),
)
# Printable ASCII minus the form feed and vertical tab, which no crystal or prompt holds.
_CHARACTERS = tuple(c for c in string.printable if c not in "\x0b\x0c")


def _prompt_words() -> list[str]:
    words = {w for text in _PROMPT_TEXTS for w in re.findall(r"[A-Za-z]+", text.replace(MASK, " "))}
    return sorted(words - set(ELEMENT_SYMBOLS) - set(_CHARACTERS))


def crystal_vocabulary() -> list[str]:
    """All tokens in id order: special tokens, characters, element symbols, prompt words."""
    elements = [s for s in ELEMENT_SYMBOLS if s not in _CHARACTERS]
    return [*SPECIAL_TOKENS.values(), *_CHARACTERS, *elements, *_prompt_words()]


def build_crystal_tokenizer() -> PreTrainedTokenizerFast:
    """The crystal tokenizer; `save_pretrained` writes tokenizer.json that `AutoTokenizer` loads."""
    vocab = crystal_vocabulary()
    multi_char = sorted((t for t in vocab[len(SPECIAL_TOKENS) :] if len(t) > 1), key=lambda t: (-len(t), t))
    # Longest alternatives first, then any single character: every piece is a vocabulary entry.
    pattern = "|".join(re.escape(t) for t in multi_char) + r"|[\s\S]"
    backend = Tokenizer(
        models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=SPECIAL_TOKENS["unk_token"])
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )


def prepare_for_batched_generation(tokenizer: PreTrainedTokenizerBase) -> None:
    """Left padding (a batch continues every prompt at the same column) and a pad token (EOS if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
