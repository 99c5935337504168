"""IPT, the increase in perplexity under a transformation (Gruver et al. 2024).

For a structure s and a set G of symmetry transformations (here: the identity and random fractional
translations, which leave the crystal unchanged but change its text),
``IPT(s) = mean_g PPL(t_g(s)) - min_g PPL(t_g(s))``. A model that has learned the invariance gives every
translated text the same perplexity, hence IPT 0. Perplexity is taken over the crystal text (and the end
of sequence token, when the tokenizer has one) given the unconditional generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pymatgen.core import Structure
from tqdm.auto import tqdm

# Gruver et al. 2024 average IPT over random translations; a handful per structure keeps it cheap.
DEFAULT_TRANSLATIONS = 4


@torch.no_grad()
def text_perplexity(model, tokenizer, text: str, prompt: str = "") -> float:
    """Perplexity of ``text`` after ``prompt`` under a causal LM (loss on the text tokens only)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        text_ids = [*text_ids, tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = torch.tensor([bos + prompt_ids + text_ids], device=model.device)
    labels = ids.clone()
    labels[0, : len(bos) + len(prompt_ids)] = -100
    if len(bos) + len(prompt_ids) == 0:
        labels[0, 0] = -100  # the first token has no context to be predicted from
    loss = model(input_ids=ids, labels=labels).loss
    return float(torch.exp(loss))


def ipt(
    model,
    tokenizer,
    structures: Sequence[Structure],
    *,
    n_translations: int = DEFAULT_TRANSLATIONS,
    prompt: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Per-structure IPT and untransformed perplexity (``{"ipt": ..., "perplexity": ...}``).

    ``prompt`` defaults to ``hf_crystal.prompts.generation_prompt()`` (no conditions).
    """
    from hf_crystal.crystal_format import format_of
    from hf_crystal.prompts import generation_prompt
    from hf_crystal.text import encode

    crystal_format = format_of(model.config)
    prompt = generation_prompt(None, crystal_format) if prompt is None else prompt
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    ipts, ppls = [], []
    for s in tqdm(structures, desc="IPT", disable=not progress):
        if crystal_format == "wyckoff":  # the analogue of a translation: a drawn origin and representatives
            moved = [encode(s, format="wyckoff", translate="random", seed=rng) for _ in range(n_translations)]
            texts = [encode(s, format="wyckoff"), *moved]
        else:
            texts = [encode(s)] + [encode(s, translate=rng.random(3)) for _ in range(n_translations)]
        values = np.array([text_perplexity(model, tokenizer, t, prompt) for t in texts])
        ipts.append(values.mean() - values.min())
        ppls.append(values[0])
    model.train(was_training)
    return {"ipt": np.array(ipts), "perplexity": np.array(ppls)}
