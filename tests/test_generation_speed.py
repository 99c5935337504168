"""What the generation speed work must not change: the Wyckoff constraint's masks are those of a plain per-row
walk of its grammar, and rows that share a prompt (and its prefill) sample what they would alone."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal import generation_utils
from hf_crystal.constraints import _token_texts
from hf_crystal.constraints_wyckoff import WyckoffConstraint, WyckoffLogitsProcessor, _Grammar
from hf_crystal.testing import tiny_llama
from hf_crystal.tokenization import build_crystal_tokenizer


def _reference_scores(
    constraint, tokenizer, generated: list[list[int]], scores: torch.Tensor
) -> torch.Tensor:
    """The constraint applied row by row: each row's state by stepping its tokens' characters through the
    grammar, and each token of the vocabulary tried character by character (no trie, no cache)."""
    grammar, texts, eos = _Grammar(constraint), _token_texts(tokenizer), tokenizer.eos_token_id

    def walk(state, text):
        for ch in text:
            state = state and grammar.step(state, ch)
        return state

    out = torch.full_like(scores, float("-inf"))
    for row, tokens in enumerate(generated):
        if eos in tokens:
            out[row] = scores[row]
            continue
        state = grammar.start
        for token in tokens:
            state = walk(state, texts[token])
        allowed = [t for t, text in enumerate(texts) if text and walk(state, text) is not None]
        allowed += [eos] if grammar.step(state, None) is not None else []
        out[row, allowed] = scores[row, allowed]
    return out


@pytest.mark.parametrize(
    "constraint",
    [WyckoffConstraint(spacegroup=225, composition={"Na": 1, "Cl": 1}), WyckoffConstraint(max_sites=6)],
    ids=["NaCl-225", "free"],
)
def test_wyckoff_masks_equal_a_per_row_walk_of_the_grammar(constraint):
    tokenizer = build_crystal_tokenizer()
    processor = WyckoffLogitsProcessor(tokenizer, constraint, prompt_length=2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (6, 2), generator=generator)  # a 2-token prompt
    for step in range(40):
        scores = torch.randn(len(ids), len(tokenizer) + 3, generator=generator)  # wider than the vocabulary
        masked = processor(ids, scores)
        expected = _reference_scores(constraint, tokenizer, ids[:, 2:].tolist(), scores)
        assert torch.equal(masked, expected), step
        token = torch.multinomial(masked.softmax(-1), 1, generator=generator)
        token[(ids[:, 2:] == tokenizer.eos_token_id).any(dim=1)] = tokenizer.pad_token_id
        ids = torch.cat([ids, token], dim=1)
        if step == 15:  # finished rows leave the batch (generate_rows): the others keep their states
            processor, ids = processor.select([5, 0, 3, 4]), ids[[5, 0, 3, 4]]
        if step == 25:  # reordered rows (beam search) are replayed from their tokens
            ids = ids[[1, 0, 3, 2]]


def test_rows_with_one_prompt_share_its_prefill_and_sample_as_alone(monkeypatch):
    tokenizer = build_crystal_tokenizer()
    pipe = pipeline("crystal-generation", model=tiny_llama(tokenizer, seed=0), tokenizer=tokenizer)
    conditions = [{}, {"formula": "NaCl"}, {}, {"spacegroup": 12}, {}]
    kwargs = {"max_sites": 2, "formula_units": "cell", "batch_size": 5}
    shared = []
    prefill = generation_utils.prefill_shared_prompts
    monkeypatch.setattr(generation_utils, "prefill_shared_prompts", lambda *a: shared.append(prefill(*a)))
    greedy = [g[0]["text"] for g in pipe(conditions, temperature=0, **kwargs)]
    sampled = [g[0]["text"] for g in pipe(conditions, seed=3, **kwargs)]
    assert shared == [True, True]  # both calls found repeated prompts and prefilled them once
    monkeypatch.setattr(generation_utils, "prefill_shared_prompts", lambda *a: False)
    assert [g[0]["text"] for g in pipe(conditions, temperature=0, **kwargs)] == greedy
    assert [g[0]["text"] for g in pipe(conditions, seed=3, **kwargs)] == sampled
