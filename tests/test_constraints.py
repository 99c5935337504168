"""Constrained decoding: sampled crystals from random tiny Llamas always decode and obey their constraints,
with our crystal tokenizer and with a LLaMA-style BPE (Metaspace, single digits, byte fallback)."""

import re
import string

import numpy as np
import pytest
import torch
from pymatgen.core import Composition
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_crystal.constraints import (
    ConstraintError,
    CrystalConstraint,
    CrystalLogitsProcessor,
    _angle_range,
)
from hf_crystal.prompts import generation_prompt
from hf_crystal.testing import llama_style_tokenizer, tiny_llama
from hf_crystal.text import ELEMENT_SYMBOLS, decode, try_decode
from hf_crystal.tokenization import build_crystal_tokenizer

SAMPLES = 256  # sampled crystals per tokenizer in the main test
BATCH = 64
MAX_SITES = 4  # keeps sampling short; the bound itself is tested separately
# Lengths line + angles line + MAX_SITES sites, one character per token at worst, plus slack.
COORDS_LINE = re.compile(r"0\.\d\d 0\.\d\d 0\.\d\d")


@pytest.fixture(scope="module", params=["crystal", "llama-bpe"])
def setup(request):
    """(tokenizer, tiny random model) for each tokenizer kind."""
    tokenizer = build_crystal_tokenizer() if request.param == "crystal" else llama_style_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer, tiny_llama(tokenizer)


def sample(setup, constraints, prompts, *, per_prompt=1, constrained=True, **kwargs):
    """Completions (texts, token ids) for `prompts`, `per_prompt` each; the token budget from the constraints."""
    tokenizer, model = setup
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    width = batch.input_ids.shape[1]
    rows = (
        [c for c in constraints for _ in range(per_prompt)] if isinstance(constraints, list) else constraints
    )
    processors = [CrystalLogitsProcessor(tokenizer, rows, width)] if constrained else []
    budget = max(c.max_new_tokens for c in (constraints if isinstance(constraints, list) else [constraints]))
    generation = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": budget}
    generation |= kwargs
    with torch.no_grad():
        out = model.generate(
            **batch,
            num_return_sequences=per_prompt,
            logits_processor=processors,
            pad_token_id=tokenizer.pad_token_id,
            **generation,
        )
    completions = out[:, width:].tolist()
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return texts, completions


def sample_many(setup, constraint, n, prompt=None, **kwargs):
    texts = []
    for start in range(0, n, BATCH):
        torch.manual_seed(start)
        prompts = [prompt or generation_prompt()] * min(BATCH, n - start)
        texts += sample(setup, constraint, prompts, **kwargs)[0]
    return texts


def test_sampled_crystals_always_decode(setup):
    texts = sample_many(setup, CrystalConstraint(max_sites=MAX_SITES), SAMPLES)
    failures = [(t, err) for t in texts if (err := try_decode(t)[1]) is not None]
    assert not failures, f"{len(failures)}/{len(texts)} do not decode, e.g. {failures[:3]}"
    structures = [decode(t) for t in texts]
    assert all(1 <= len(s) <= MAX_SITES for s in structures)
    assert len({s.composition.formula for s in structures}) > SAMPLES // 4  # sampling, not one fixed answer
    for text in texts:
        lengths, angles = text.split("\n")[:2]
        assert all(re.fullmatch(r"[1-9]\d{0,2}\.\d", x) for x in lengths.split(" ")), lengths
        assert all(1 <= int(x) <= 179 for x in angles.split(" ")), angles


def test_unconstrained_random_model_mostly_fails(setup):
    """The constraint does the work: the same model without it almost never writes a crystal."""
    torch.manual_seed(0)
    constraint = CrystalConstraint(max_sites=MAX_SITES)
    texts, _ = sample(setup, constraint, [generation_prompt()] * BATCH, constrained=False)
    assert sum(try_decode(t)[0] is not None for t in texts) <= BATCH // 10


def test_element_set(setup):
    allowed = ("N", "Na", "O")
    texts = sample_many(setup, CrystalConstraint(elements=allowed, max_sites=MAX_SITES), BATCH)
    symbols = {site.specie.symbol for t in texts for site in decode(t)}
    assert symbols <= set(allowed) and len(symbols) >= 2


@pytest.mark.parametrize("formula", ["Na4Cl4", "Na3N", "N2", "Li1Fe1P1O4"])
def test_exact_composition(setup, formula):
    composition = {str(e): int(n) for e, n in Composition(formula).items()}
    constraint = CrystalConstraint(composition=composition)
    texts = sample_many(setup, constraint, 32, generation_prompt({"formula": formula}))
    assert {decode(t).composition for t in texts} == {Composition(formula)}


def test_max_sites(setup):
    texts = sample_many(setup, CrystalConstraint(max_sites=2), BATCH)
    sizes = [len(decode(t)) for t in texts]
    assert max(sizes) == 2 and min(sizes) >= 1


def test_eos_only_after_a_complete_site(setup):
    tokenizer, _ = setup
    _, completions = sample(setup, CrystalConstraint(max_sites=MAX_SITES), [generation_prompt()] * BATCH)
    for ids in completions:
        assert tokenizer.eos_token_id in ids, "generation ran out of tokens"
        text = tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)])
        assert COORDS_LINE.fullmatch(text.split("\n")[-1]), text


def _allowed_next(tokenizer, constraint, text):
    """The texts of the tokens allowed after completion `text` (EOS as "<EOS>")."""
    prompt = tokenizer(generation_prompt(), add_special_tokens=False).input_ids
    completion = tokenizer(text, add_special_tokens=False).input_ids if text else []
    ids = torch.tensor([prompt + completion])
    scores = CrystalLogitsProcessor(tokenizer, constraint, len(prompt))(ids, torch.zeros(1, len(tokenizer)))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    return {"<EOS>" if t == tokenizer.eos_token_id else tokenizer.decode([t]) for t in allowed}


def test_allowed_tokens_at_key_points():
    tokenizer = build_crystal_tokenizer()
    head = "4.2 4.2 4.2\n90 90 90\n"
    assert "<EOS>" not in _allowed_next(tokenizer, CrystalConstraint(), head + "Na")
    assert "<EOS>" not in _allowed_next(tokenizer, CrystalConstraint(), "")
    assert "<EOS>" in _allowed_next(tokenizer, CrystalConstraint(), head + "Na\n0.00 0.00 0.00")
    assert _allowed_next(tokenizer, CrystalConstraint(max_sites=1), head + "Na\n0.00 0.00 0.00") == {"<EOS>"}
    # N vs Na: with only Na left, "N" may be written (it starts "Na") but not ended.
    after_n = _allowed_next(tokenizer, CrystalConstraint(composition={"Na": 1, "Cl": 1}), head + "N")
    assert after_n == {"a"}
    assert _allowed_next(tokenizer, CrystalConstraint(composition={"N": 1}), head + "N") == {"\n"}
    # The third angle closes a cell with the first two: 20 and 30 leave 11-49.
    angles = "4.2 4.2 4.2\n20 30 "
    assert _allowed_next(tokenizer, CrystalConstraint(), angles) == set("1234")
    assert _allowed_next(tokenizer, CrystalConstraint(), angles + "1") == set("123456789")
    assert _allowed_next(tokenizer, CrystalConstraint(), angles + "4") == set(string.digits)
    assert _allowed_next(tokenizer, CrystalConstraint(), angles + "49") == {"\n"}


def test_no_two_sites_at_the_same_coordinates():
    tokenizer = build_crystal_tokenizer()
    head = "4.2 4.2 4.2\n90 90 90\nNa\n0.10 0.20 0.30\n"
    # The last digit that would repeat a site is masked, whatever the element; others stay.
    assert _allowed_next(tokenizer, CrystalConstraint(), head + "Cl\n0.10 0.20 0.3") == set(string.digits) - {
        "0"
    }
    assert _allowed_next(tokenizer, CrystalConstraint(), head + "Cl\n0.10 0.20 0.4") == set(string.digits)
    assert _allowed_next(tokenizer, CrystalConstraint(), head + "Cl\n0.10 0.21 0.3") == set(string.digits)
    # When every last digit would repeat a site, the row keeps them all (no dead end).
    full = "".join(f"Na\n0.10 0.20 0.3{d}\n" for d in string.digits)
    assert _allowed_next(
        tokenizer, CrystalConstraint(), "4.2 4.2 4.2\n90 90 90\n" + full + "Na\n0.10 0.20 0.3"
    ) == set(string.digits)


def test_sampled_crystals_have_distinct_sites(setup):
    """A model that strongly prefers repeating one site (zero logits but for the constraint) never writes a
    crystal with two sites on the same coordinates, also across a compacted (selected) batch."""
    texts = sample_many(setup, CrystalConstraint(composition={"Na": 4, "Cl": 4}), 64, do_sample=False)
    for text in texts:
        lines = text.split("\n")[3::2]
        assert len(lines) == 8 and len(set(lines)) == 8, text


def test_merged_bpe_tokens_obey_the_counters():
    """A token that writes a whole element line ("\\nCl\\n") is allowed only while that element has atoms left."""
    tokenizer = llama_style_tokenizer()
    prompt = tokenizer(generation_prompt(), add_special_tokens=False).input_ids
    text = "4.2 4.2 4.2\n90 90 90\nNa\n0.00 0.00 0.00"
    completion = tokenizer.convert_tokens_to_ids(["▁" if c == " " else c for c in text])
    processor = CrystalLogitsProcessor(
        tokenizer, CrystalConstraint(composition={"Na": 1, "Cl": 1}), len(prompt)
    )
    scores = processor(torch.tensor([prompt + completion]), torch.zeros(1, len(tokenizer)))
    allowed = set(tokenizer.convert_ids_to_tokens(torch.isfinite(scores[0]).nonzero().flatten().tolist()))
    assert {"\n", "<0x0A>", "\nC", "\nCl", "\nCl\n"} <= allowed
    assert all("\nCl\n".startswith(t.replace("<0x0A>", "\n")) for t in allowed), allowed  # no "\nNa\n", "\nN"


def test_angle_range_matches_decode():
    rng = np.random.default_rng(0)
    for alpha, beta in rng.integers(1, 180, (300, 2)):
        lo, hi = _angle_range(int(alpha), int(beta))
        for gamma in {1, lo - 1, lo, hi, hi + 1, 179} & set(range(1, 180)):
            text = f"3.0 3.0 3.0\n{alpha} {beta} {gamma}\nH\n0.00 0.00 0.00"
            assert (try_decode(text)[0] is not None) == (lo <= gamma <= hi), (alpha, beta, gamma)


def test_batch_with_a_constraint_per_prompt(setup):
    constraints = [
        CrystalConstraint(composition={"Na": 1, "Cl": 1}),
        CrystalConstraint(elements=("O",), max_sites=3),
        CrystalConstraint(max_sites=1),
    ]
    # Prompts of different lengths: left padding.
    prompts = [
        generation_prompt({"formula": "NaCl"}),
        generation_prompt(),
        generation_prompt({"spacegroup": 225}),
    ]
    torch.manual_seed(0)
    texts, _ = sample(setup, constraints, prompts, per_prompt=8)
    structures = [decode(t) for t in texts]
    assert {s.composition.formula for s in structures[:8]} == {"Na1 Cl1"}
    assert all({x.specie.symbol for x in s} == {"O"} and len(s) <= 3 for s in structures[8:16])
    assert all(len(s) == 1 for s in structures[16:])


def test_greedy(setup):
    texts, _ = sample(
        setup, CrystalConstraint(max_sites=MAX_SITES), [generation_prompt()] * 4, do_sample=False
    )
    assert len(set(texts)) == 1
    decode(texts[0])


def test_beam_search(setup):
    constraint = CrystalConstraint(composition={"Na": 2, "O": 1})
    texts, _ = sample(setup, constraint, [generation_prompt()] * 2, num_beams=3, do_sample=False)
    assert all(decode(t).composition == Composition("Na2O") for t in texts)


def test_max_new_tokens_is_the_longest_text_plus_eos():
    longest = "999.9 999.9 999.9\n179 179 179" + "\nNa\n0.99 0.99 0.99" * 3
    assert CrystalConstraint(max_sites=3).max_new_tokens == len(longest) + 1
    assert CrystalConstraint(composition={"Na": 2, "O": 1}).max_new_tokens == len(longest) + 1


def test_rows_after_eos_are_left_alone():
    tokenizer = build_crystal_tokenizer()
    prompt = tokenizer(generation_prompt(), add_special_tokens=False).input_ids
    done = tokenizer("4.2 4.2 4.2\n90 90 90\nNa\n0.00 0.00 0.00", add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + done + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * 3])
    scores = torch.randn(1, len(tokenizer))
    out = CrystalLogitsProcessor(tokenizer, CrystalConstraint(), len(prompt))(ids, scores)
    assert torch.equal(out, scores)


def test_typed_errors():
    tokenizer = build_crystal_tokenizer()
    with pytest.raises(ConstraintError, match="unknown element symbols \\['Ln'\\]"):
        CrystalConstraint(elements=("Na", "Ln"))
    with pytest.raises(ConstraintError, match="unknown element symbols \\['Xx'\\]"):
        CrystalConstraint(composition={"Xx": 1})
    with pytest.raises(ConstraintError, match="70 atoms, more than max_sites=64"):
        CrystalConstraint(composition={"Na": 35, "Cl": 35})
    with pytest.raises(ConstraintError, match="whole numbers"):
        CrystalConstraint(composition={"Na": 0.5})
    with pytest.raises(ConstraintError, match="not in elements"):
        CrystalConstraint(elements=("Na",), composition={"Cl": 1})
    with pytest.raises(ConstraintError, match="max_sites"):
        CrystalConstraint(max_sites=0)
    processor = CrystalLogitsProcessor(tokenizer, [CrystalConstraint()] * 2, prompt_length=0)
    with pytest.raises(ConstraintError, match="batch of 3 rows, but 2 constraints"):
        processor(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, len(tokenizer)))
    with pytest.raises(ConstraintError, match="resize the model's embeddings"):
        processor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, len(tokenizer) - 1))


def _word_level_tokenizer(vocab, **special):
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=vocab[0]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=vocab[0], **special)


def test_tokenizers_that_cannot_write_crystals():
    letters = sorted(set("".join(ELEMENT_SYMBOLS)))
    no_eos = _word_level_tokenizer(["<unk>", *string.digits, ".", " ", "\n", *letters])
    with pytest.raises(ConstraintError, match="no EOS token"):
        CrystalLogitsProcessor(no_eos, CrystalConstraint(), 0)
    no_digits = _word_level_tokenizer(["<unk>", "</s>", ".", " ", "\n", "0", *letters], eos_token="</s>")
    with pytest.raises(ConstraintError, match="no single token for \\['1', '2'"):
        CrystalLogitsProcessor(no_digits, CrystalConstraint(), 0)


def test_row_states_follow_any_reordering_and_selection():
    """Masks never depend on how the processor got to a row: incremental, reordered (beam search), partly new
    rows replayed, or a selected subset of rows continued. Each is checked against a fresh processor."""
    tokenizer = build_crystal_tokenizer()
    prompt = tokenizer(generation_prompt(), add_special_tokens=False).input_ids
    texts = [
        "4.2 4.2 4.2\n90 90 90\nNa\n0.00 0.50 0.00\nCl\n0.50 0.50 0.50",
        "4.2 5.1 4.2\n90 90 120\nNa\n0.25 0.00 0.00\nNa\n0.50 0.50",
        "3.9 3.9 3.9\n90 90 90\nCl\n0.00 0.00 0.00\nNa\n0.50 0.00 0.",
    ]
    rows = [prompt + tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    width = min(map(len, rows))
    ids = torch.tensor([r[:width] for r in rows])
    constraints = [
        CrystalConstraint(composition={"Na": 2, "Cl": 2}),
        CrystalConstraint(elements=("Na", "Cl"), max_sites=3),
        CrystalConstraint(composition={"Na": 1, "Cl": 1}),
    ]

    def fresh(index, upto):
        processor = CrystalLogitsProcessor(tokenizer, [constraints[i] for i in index], len(prompt))
        return processor(ids[index, :upto], torch.zeros(len(index), len(tokenizer)))

    start = len(prompt) + 10
    processor = CrystalLogitsProcessor(tokenizer, constraints, len(prompt))
    for upto in range(start, width + 1):  # one token per call, as in generate
        out = processor(ids[:, :upto], torch.zeros(3, len(tokenizer)))
        assert torch.equal(out, fresh([0, 1, 2], upto))
    selected = processor.select([2, 0])
    assert torch.equal(selected(ids[[2, 0]], torch.zeros(2, len(tokenizer))), fresh([2, 0], width))
    # Beam-style: rows reordered, one row that is no parent's continuation (replayed from scratch).
    beams = CrystalLogitsProcessor(tokenizer, [constraints[0]] * 3, len(prompt))
    beams(ids[[0, 1, 2], : width - 1], torch.zeros(3, len(tokenizer)))
    orphan = prompt + tokenizer(texts[0].replace("4.2", "4.3", 1), add_special_tokens=False).input_ids
    mixed = torch.cat([ids[[1, 1, 0], :width], torch.tensor([orphan[:width]])])
    out = beams(mixed[[0, 1, 3]], torch.zeros(3, len(tokenizer)))  # two children of row 1, one orphan
    reference = CrystalLogitsProcessor(tokenizer, [constraints[0]] * 3, len(prompt))
    assert torch.equal(out, reference(mixed[[0, 1, 3]], torch.zeros(3, len(tokenizer))))
    assert torch.isfinite(out[2]).any()  # the orphan's text is valid: it has allowed tokens
    with pytest.raises(ConstraintError, match="applied at least once"):
        CrystalLogitsProcessor(tokenizer, constraints, len(prompt)).select([0])
