"""IPT with a tiny random Llama and the project's crystal tokenizer."""

import numpy as np
import pytest
import torch
from factories import rocksalt

from hf_crystal.evaluation.ipt import ipt, text_perplexity
from hf_crystal.testing import tiny_llama
from hf_crystal.tokenization import build_crystal_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_crystal_tokenizer()


def test_uniform_model_has_vocabulary_size_perplexity_and_zero_ipt(tokenizer):
    model = tiny_llama(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next-token distribution is uniform
    assert text_perplexity(model, tokenizer, "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00") == pytest.approx(
        len(tokenizer), rel=1e-4
    )
    out = ipt(model, tokenizer, [rocksalt()], n_translations=3, progress=False)
    assert out["ipt"] == pytest.approx([0.0], abs=1e-3)
    assert out["perplexity"] == pytest.approx([len(tokenizer)], rel=1e-4)


def test_random_model_is_not_translation_invariant(tokenizer):
    model = tiny_llama(tokenizer, seed=1)
    structures = [rocksalt(), rocksalt().get_primitive_structure()]
    out = ipt(model, tokenizer, structures, n_translations=3, progress=False, seed=0)
    assert out["ipt"].shape == (2,) and (out["ipt"] > 0).all() and np.isfinite(out["perplexity"]).all()
    # Only the identity: nothing to compare with, IPT is exactly 0.
    assert ipt(model, tokenizer, structures, n_translations=0, progress=False)["ipt"] == pytest.approx([0, 0])
    # Deterministic for a seed.
    again = ipt(model, tokenizer, structures, n_translations=3, progress=False, seed=0)
    np.testing.assert_allclose(again["ipt"], out["ipt"])


def test_prompt_tokens_are_not_scored(tokenizer):
    model = tiny_llama(tokenizer, seed=2)
    text = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00"
    short = text_perplexity(model, tokenizer, text, prompt="Below is a description of a bulk material.\n")
    assert np.isfinite(short) and short != text_perplexity(model, tokenizer, text)
