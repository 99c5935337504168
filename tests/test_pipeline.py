"""pipeline("crystal-generation") and pipeline("crystal-infill") on tiny random models: outputs, nesting,
constraints, batching, infill, adapters, the generate command."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import torch
from ase.io import read as ase_read
from factories import rocksalt, sodium_nitride
from peft import LoraConfig, PeftModel, get_peft_model
from pymatgen.core import Composition
from transformers import AutoModelForCausalLM, pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal import pipeline_infill
from hf_crystal.commands import main
from hf_crystal.hub import push_folder
from hf_crystal.loading import load_crystal_model
from hf_crystal.prompts import (
    FormulaUnitsError,
    format_formula,
    generation_prompt,
    infill_prompt,
    mask_element,
)
from hf_crystal.structure_io import read_structures
from hf_crystal.testing import llama_style_tokenizer, save_tiny_llama, tiny_llama
from hf_crystal.text import ELEMENT_SYMBOLS, decode, encode
from hf_crystal.tokenization import build_crystal_tokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return pipeline("crystal-generation", model=str(tiny_model))


@pytest.fixture(scope="module")
def infill(tiny_model):
    return pipeline("crystal-infill", model=str(tiny_model))


def test_unconstrained_garbage_comes_back_with_errors(pipe):
    samples = pipe(6, constrain=False, max_new_tokens=30, seed=0, batch_size=3)
    assert len(samples) == 6
    for sample in samples:
        assert set(sample) == {
            "text",
            "structure",
            "valid",
            "error",
            "conditions",
            "attempts",
            "spacegroup",
            "wyckoff",
        }
        assert sample["structure"] is None and sample["valid"] is False and sample["attempts"] == 1
        assert isinstance(sample["error"], str) and sample["error"]


def test_constrained_samples_all_decode(pipe):
    samples = pipe(120, max_sites=4, seed=1, batch_size=60)
    assert all(s["error"] is None and s["structure"] is not None for s in samples)
    for sample in samples:
        assert decode(sample["text"]) == sample["structure"]
        assert 1 <= len(sample["structure"]) <= 4


def test_formula_fixes_the_composition(pipe):
    for formula in ("Na4Cl4", "Na3N"):
        samples = pipe(
            {"formula": formula}, num_return_sequences=10, seed=2, batch_size=10, formula_units="cell"
        )
        assert {s["structure"].composition for s in samples} == {Composition(formula)}
        assert all(
            s["conditions"] == {"formula": format_formula(formula), "formula_units": "cell"} for s in samples
        )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_any_formula_units_by_default(pipe, batch_size):
    """A formula means any number of formula units within max_sites; each sample states the cell it was
    prompted and constrained with, and that Z was free."""
    samples = pipe({"formula": "Li2O"}, num_return_sequences=24, seed=0, max_sites=9, batch_size=batch_size)
    cells = Counter(s["structure"].composition.formula for s in samples)
    assert set(cells) <= {"Li2 O1", "Li4 O2", "Li6 O3"} and len(cells) > 1  # Z = 1, 2, 3: at most 9 atoms
    for sample in samples:
        composition = sample["structure"].composition
        assert composition.reduced_formula == "Li2O" and len(sample["structure"]) <= 9
        assert sample["conditions"] == {"formula": format_formula(composition), "formula_units": "any"}
    again = pipe({"formula": "Li2O"}, num_return_sequences=24, seed=0, max_sites=9, batch_size=batch_size)
    assert [s["text"] for s in again] == [s["text"] for s in samples]
    greedy = pipe([{"formula": "Li2O"}, {}], num_return_sequences=3, max_sites=9, temperature=0, batch_size=2)
    assert {s["conditions"]["formula"] for s in greedy[0]} == {"Li4O2"}  # the most frequent Z of MP-20


def test_formula_units_fixed_and_per_condition_set(pipe):
    out = pipe(
        [{"formula": "NaCl"}, {"formula": "NaCl", "formula_units": "cell"}],
        formula_units=3,
        num_return_sequences=2,
        seed=0,
        batch_size=2,
    )
    assert [{s["structure"].composition.formula for s in group} for group in out] == [
        {"Na3 Cl3"},
        {"Na1 Cl1"},
    ]
    assert out[0][0]["conditions"] == {"formula": "Na3Cl3", "formula_units": 3}


def test_impossible_formula_units_are_typed_errors(pipe):
    with pytest.raises(FormulaUnitsError, match="7 atoms, more than max_sites=5"):
        pipe({"formula": "LiFePO4"}, max_sites=5)
    with pytest.raises(FormulaUnitsError, match="more than max_sites=20"):
        pipe({"formula": "NaCl"}, formula_units=11, max_sites=20)
    with pytest.raises(FormulaUnitsError, match="positive integer"):
        pipe({"formula": "NaCl", "formula_units": 0})


def test_element_set_is_respected(pipe):
    samples = pipe(16, elements=["Li", "O"], max_sites=4, seed=3, batch_size=16)
    assert {el.symbol for s in samples for el in s["structure"].composition} <= {"Li", "O"}


def test_prompts_are_built_as_in_training(pipe, monkeypatch):
    seen = []
    generate = pipe.model.generate

    def spy(input_ids, attention_mask, **kwargs):
        seen.extend(
            pipe.tokenizer.decode(ids[mask.bool()])
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        )
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(pipe.model, "generate", spy)
    conditions = [{"formula": "NaCl", "band_gap": 1.23456}, {"spacegroup": 225, "e_above_hull": 0.0}, {}]
    out = pipe(
        conditions,
        num_return_sequences=2,
        max_new_tokens=5,
        constrain=False,
        batch_size=3,
        formula_units="cell",
    )
    assert [len(group) for group in out] == [2, 2, 2]
    # One prompt row per sample (the pipeline expands the prompts before `generate`).
    assert sorted(seen) == sorted(generation_prompt(c) for c in conditions for _ in range(2))


@pytest.mark.parametrize("constrain", [True, False])
def test_batch_size_does_not_change_greedy_output(pipe, constrain):
    conditions = [{"formula": "NaCl"}, {"spacegroup": 12}, {}, {"formula": "Li2O"}, {"band_gap": 2.0}]
    kwargs = {"temperature": 0, "max_new_tokens": 60, "constrain": constrain}
    one = pipe(conditions, batch_size=1, **kwargs)
    five = pipe(conditions, batch_size=5, **kwargs)
    assert [g[0]["text"] for g in one] == [g[0]["text"] for g in five]


def test_seed_makes_sampling_reproducible(pipe):
    a = [s["text"] for s in pipe(4, seed=5, max_sites=3, batch_size=4)]
    b = [s["text"] for s in pipe(4, seed=5, max_sites=3, batch_size=4)]
    assert a == b and len(set(a)) > 1


def test_until_valid_resamples_and_reports(pipe):
    samples = pipe(3, constrain=False, max_new_tokens=10, until_valid=True, max_attempts=3, batch_size=3)
    assert all(s["attempts"] == 3 and not s["valid"] for s in samples)


def test_until_valid_stops_resampling_valid_slots(pipe):
    samples = pipe(8, max_sites=3, until_valid=True, max_attempts=4, seed=0, batch_size=8)
    assert all(1 <= s["attempts"] <= 4 for s in samples)
    assert all(s["valid"] for s in samples if s["attempts"] < 4)  # a slot ends early only when valid


@pytest.mark.parametrize("constrain", [True, False])
@pytest.mark.parametrize("at", ["construction", "call"])
def test_num_return_sequences_nesting(tiny_model, constrain, at):
    kwargs = {"constrain": constrain, "max_sites": 3, "seed": 0}
    if not constrain:
        kwargs["max_new_tokens"] = 12
    if at == "construction":
        pipe = pipeline("crystal-generation", model=str(tiny_model), num_return_sequences=3)
    else:
        pipe = pipeline("crystal-generation", model=str(tiny_model))
        kwargs["num_return_sequences"] = 3
    single = pipe({"formula": "NaCl"}, **kwargs)
    assert len(single) == 3 and all(isinstance(s, dict) and s["conditions"] for s in single)
    grouped = pipe([{"formula": "NaCl"}, {}, {"spacegroup": 225}], batch_size=2, **kwargs)
    assert [len(g) for g in grouped] == [3, 3, 3]
    assert [g[0]["conditions"] for g in grouped] == [
        {"formula": "Na1Cl1", "formula_units": "any"},
        {},
        {"spacegroup": 225},
    ]
    for sample in (s for group in grouped for s in group):  # separate samples, never glued into one text
        if constrain:
            assert len(sample["structure"]) <= 3
        else:
            assert len(pipe.tokenizer(sample["text"], add_special_tokens=False)["input_ids"]) <= 12
    if constrain:
        assert all(s["structure"].composition == Composition("NaCl") for s in grouped[0])
        assert len({s["text"] for s in grouped[1]}) == 3
    assert len(pipe(2, **kwargs)) == 6  # an int: N prompts, flat


def test_infill_ranks_candidates_without_the_masked_element(infill):
    answer = infill(sodium_nitride(), mask_element="N", num_candidates=len(ELEMENT_SYMBOLS))
    probabilities = [c["probability"] for c in answer["candidates"]]
    assert answer["masked_element"] == "N"
    assert {c["element"] for c in answer["candidates"]} == set(ELEMENT_SYMBOLS) - {"N"}
    assert abs(sum(probabilities) - 1) < 1e-4 and probabilities == sorted(probabilities, reverse=True)
    with_masked = infill(sodium_nitride(), mask_element="N", exclude_masked=False, num_candidates=200)
    assert len(with_masked["candidates"]) == len(ELEMENT_SYMBOLS)
    top = infill(rocksalt().to(fmt="cif"), mask_element="Na", num_candidates=3, return_structures=True)
    assert len(top["candidates"]) == 3 and "Na" not in {c["element"] for c in top["candidates"]}
    for candidate in top["candidates"]:
        assert candidate["structure"].composition == Composition({candidate["element"]: 4, "Cl": 4}) or (
            candidate["element"] == "Cl" and candidate["structure"].composition == Composition("Cl8")
        )


def test_infill_candidates_and_batches(infill):
    few = infill(rocksalt(), mask_element="Na", candidates=["K", "Li", "Na"])
    assert {c["element"] for c in few["candidates"]} == {"K", "Li"}
    assert abs(sum(c["probability"] for c in few["candidates"]) - 1) < 1e-5
    full = infill(rocksalt(), mask_element="Na", num_candidates=200)
    ratio = dict((c["element"], c["probability"]) for c in full["candidates"])
    assert few["candidates"][0]["probability"] / few["candidates"][1]["probability"] == pytest.approx(
        ratio[few["candidates"][0]["element"]] / ratio[few["candidates"][1]["element"]], rel=1e-4
    )
    one = [infill(s, mask_element="Na") for s in (rocksalt(), sodium_nitride())]
    batched = infill([rocksalt(), sodium_nitride()], mask_element="Na", batch_size=2)
    assert [a["candidates"][0]["element"] for a in one] == [b["candidates"][0]["element"] for b in batched]
    assert [a["candidates"][0]["probability"] for a in one] == pytest.approx(
        [b["candidates"][0]["probability"] for b in batched], rel=1e-4
    )


def _naive_infill_score(infill, prompt: torch.Tensor, symbol: str) -> torch.Tensor:
    """log p(symbol + EOS | prompt), the prompt and completion run as one sequence."""
    completion = torch.tensor(infill._completion_ids(symbol))
    logits = infill.model(input_ids=torch.cat([prompt, completion])[None]).logits[0]
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
    return log_probs.gather(-1, completion[:, None]).sum()


@pytest.mark.parametrize("kind", ["crystal", "bpe"])
@pytest.mark.parametrize("budget", [None, 1])  # 1 byte: one candidate per chunk
def test_infill_scores_equal_the_per_candidate_computation(kind, budget, monkeypatch):
    """The prompt runs once and its cache serves every candidate; the scores are those of running prompt +
    completion per candidate (multi-token symbols and right padding with the BPE)."""
    tokenizer = build_crystal_tokenizer() if kind == "crystal" else llama_style_tokenizer()
    infill = pipeline("crystal-infill", model=tiny_llama(tokenizer, seed=1), tokenizer=tokenizer)
    if budget is not None:
        monkeypatch.setattr(pipeline_infill, "_CACHE_BUDGET", budget)
    text = infill_prompt(mask_element(encode(sodium_nitride()), "N"))
    prompt = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    symbols = [s for s in ELEMENT_SYMBOLS if s != "N"]
    if kind == "bpe":  # completions of 2 to 5 tokens: right-padded continuations
        assert len({len(infill._completion_ids(s)) for s in symbols}) > 1
    with torch.no_grad():
        expected = torch.stack([_naive_infill_score(infill, prompt, s) for s in symbols])
        scores = infill._score(prompt, symbols)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_infill_errors(infill):
    with pytest.raises(ValueError, match="mask_element"):
        infill(rocksalt())
    with pytest.raises(ValueError, match="unknown"):
        infill(rocksalt(), mask_element="Na", candidates=["Kk"])
    with pytest.raises(TypeError, match="Structures or CIF"):
        infill(3, mask_element="Na")


def test_llama_style_bpe_tokenizer(tmp_path):
    """A BPE with merged tokens (" 0.", "\\nNa\\n"), Metaspace and byte fallback: same guarantees."""
    bpe = pipeline(
        "crystal-generation", model=str(save_tiny_llama(tmp_path / "bpe", tokenizer=llama_style_tokenizer()))
    )
    samples = bpe(48, max_sites=4, seed=0, batch_size=48)
    assert all(s["structure"] is not None for s in samples)
    assert all(decode(s["text"]) == s["structure"] for s in samples)
    fixed = bpe({"formula": "Na3N"}, num_return_sequences=8, seed=1, batch_size=8, formula_units="cell")
    assert {s["structure"].composition for s in fixed} == {Composition("Na3N")}
    infill = pipeline("crystal-infill", model=bpe.model, tokenizer=bpe.tokenizer)
    answer = infill(sodium_nitride(), mask_element="N", num_candidates=len(ELEMENT_SYMBOLS))
    assert abs(sum(c["probability"] for c in answer["candidates"]) - 1) < 1e-4


def test_constrained_budget_fits_the_largest_crystal(pipe, monkeypatch):
    budgets = []
    generate = pipe.model.generate
    monkeypatch.setattr(
        pipe.model, "generate", lambda **kw: budgets.append(kw["max_new_tokens"]) or generate(**kw)
    )
    pipe(1, max_sites=3)
    pipe(1, max_sites=3, max_new_tokens=7)
    assert budgets[0] >= len("999.9 999.9 999.9\n179 179 179") + 3 * len("\nXx\n0.00 0.00 0.00") + 1
    assert budgets[1] == 7


def test_bad_inputs_raise_typed_errors(pipe):
    with pytest.raises(TypeError, match="crystal-infill"):
        pipe(rocksalt())
    with pytest.raises(ValueError, match="unknown conditions"):
        pipe({"colour": "red"})
    with pytest.raises(TypeError, match="crystal-generation takes"):
        pipe(3.5)
    with pytest.raises(ValueError, match="positive"):
        pipe(0)


def _adapter(base_dir, out_dir, seed: int):
    """A LoRA adapter with random non-zero weights on `base_dir`, saved to `out_dir`."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out_dir)
    return out_dir


def test_adapter_folder_loads_like_the_merged_model(tiny_model, tmp_path):
    adapter = _adapter(tiny_model, tmp_path / "adapter", seed=0)
    via_transformers = pipeline("crystal-generation", model=str(adapter))
    model, tokenizer = load_crystal_model(adapter)
    assert isinstance(model, PeftModel)
    via_peft = pipeline("crystal-generation", model=model, tokenizer=tokenizer)
    merged = model.merge_and_unload()
    via_merged = pipeline("crystal-generation", model=merged, tokenizer=tokenizer)
    kwargs = {"temperature": 0, "max_new_tokens": 40, "constrain": False}
    texts = [[s["text"] for s in p(2, **kwargs)] for p in (via_transformers, via_peft, via_merged)]
    assert texts[0] == texts[1] == texts[2]
    base_text = pipeline("crystal-generation", model=str(tiny_model))(2, **kwargs)
    assert [s["text"] for s in base_text] != texts[0]  # the adapter does change the model


def test_adapter_from_hub_with_pinned_revision(tiny_model, tmp_path, hub_server):
    base_id, adapter_id = hub_server.repo_id("base"), hub_server.repo_id("adapter")
    push_folder(tiny_model, base_id)
    first = _adapter(tiny_model, tmp_path / "v1", seed=1)
    second = _adapter(tiny_model, tmp_path / "v2", seed=2)
    for folder in (first, second):
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(
            json.dumps({**config, "base_model_name_or_path": base_id})
        )
    old = push_folder(first, adapter_id).split("/")[-1]
    push_folder(second, adapter_id)
    kwargs = {"temperature": 0, "max_new_tokens": 40, "constrain": False}

    def texts(model, tokenizer=None):
        return [
            s["text"] for s in pipeline("crystal-generation", model=model, tokenizer=tokenizer)(2, **kwargs)
        ]

    latest = texts(adapter_id)  # transformers resolves the base from adapter_config
    pinned = texts(*load_crystal_model(adapter_id, revision=old))
    assert pinned == texts(*load_crystal_model(first)) and latest == texts(*load_crystal_model(second))
    assert pinned != latest


@pytest.mark.parametrize("suffix", [".cif", ".extxyz", ".csv", ".jsonl"])
def test_generate_cli_writes_every_format_and_resumes(tiny_model, tmp_path, capsys, suffix):
    out = tmp_path / f"samples{suffix}"
    argv = ["generate", "--model", str(tiny_model), "--formula", "NaCl", "--batch-size", "4", "--seed", "0"]
    assert main([*argv, "--num", "6", "--out", str(out)]) == 0
    assert "generated 6, parsed 6, valid" in capsys.readouterr().out
    assert main([*argv, "--num", "6", "--out", str(out)]) == 2  # refuses to overwrite
    assert main([*argv, "--num", "10", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "generated 4, parsed 4" in printed and "resumed at sample 6" in printed
    ids, structures, skipped = read_structures(out)
    assert len(structures) == 10 and not skipped
    assert all(s.composition.reduced_formula == "NaCl" for s in structures)
    if suffix == ".csv":
        frame = pd.read_csv(out)
        assert list(frame["material_id"]) == [f"sample-{i:06d}" for i in range(10)]
        asked = json.loads(frame["conditions"][0])  # the cell prompted, and that Z was free
        assert asked == {"formula": format_formula(structures[0].composition), "formula_units": "any"}
    if suffix == ".extxyz":
        assert [a.info["material_id"] for a in ase_read(out, index=":")][-1] == "sample-000009"


def test_generate_cli_user_mistakes(tiny_model, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_model), "--out", str(tmp_path / "x.pdb")]) == 2
    assert "cannot write samples" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.cif")]) == 2


def test_counts_of_the_summary_line(tiny_model, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["generate", "--model", str(tiny_model), "--no-constrain", "--max-new-tokens", "8",
                 "--num", "3", "--out", str(out)]) == 0  # fmt: skip
    assert "generated 3, parsed 0, valid 0; wrote 3" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["valid"] for r in rows) == {False: 3} and all(r["error"] for r in rows)


def test_append_layer_matches_dynamic_layer():
    """The in-place key/value cache layer holds what transformers' DynamicLayer holds, through every cache
    operation generate uses (growth past its spare room, crop, batch selection, beam reordering)."""
    from transformers.cache_utils import DynamicLayer

    from hf_crystal.generation_utils import AppendLayer

    torch.manual_seed(0)
    ours, reference = AppendLayer(), DynamicLayer()

    def update(new):
        states = (torch.randn(reference.keys.shape[0] if reference.is_initialized else 4, 2, new, 3),) * 2
        for layer in (ours, reference):
            keys, values = layer.update(*states)
        assert torch.equal(keys, reference.keys) and torch.equal(values, reference.values)

    update(5)
    for _ in range(200):  # grows its buffers several times
        update(1)
    for operation, argument in (
        ("crop", -3),
        ("batch_select_indices", torch.tensor([0, 2, 3])),
        ("reorder_cache", torch.tensor([2, 0, 0])),
        ("batch_repeat_interleave", 2),
    ):
        for layer in (ours, reference):
            getattr(layer, operation)(argument)
        assert torch.equal(ours.keys, reference.keys), operation
        update(1)
        update(2)
    assert ours.get_seq_length() == reference.get_seq_length() == 5 + 200 - 3 + 4 * 3


def test_generation_uses_the_append_cache_unless_told_otherwise(pipe, monkeypatch):
    from hf_crystal.generation_utils import AppendLayer

    seen = []
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda **kw: seen.append(kw.get("cache")) or generate(**kw))
    pipe(1, max_sites=2)
    pipe(1, constrain=False, max_new_tokens=4, use_cache=False)
    pipe(1, constrain=False, max_new_tokens=4, cache_implementation="static")
    assert all(isinstance(layer, AppendLayer) for layer in seen[0].layers)
    assert seen[1:] == [None, None]


def test_finished_rows_leave_the_batch(pipe, monkeypatch):
    """Rows that wrote EOS are dropped between generate calls; greedy texts are those of one generate call
    (a caller's logits processor turns compaction off: it may keep per-row state)."""
    from transformers import LogitsProcessor

    class Identity(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    batches = []
    generate = pipe.model.generate
    monkeypatch.setattr(
        pipe.model, "generate", lambda **kw: batches.append(len(kw["input_ids"])) or generate(**kw)
    )
    conditions = [{"formula": f} for f in ("NaCl", "Ba2TiO4", "Li2O", "Na3N", "K", "SrTiO3")]
    compacted = pipe(conditions, temperature=0, batch_size=6)
    assert batches[0] == 6 and len(batches) > 1 and batches == sorted(batches, reverse=True)
    batches.clear()
    single = pipe(conditions, temperature=0, batch_size=6, logits_processor=[Identity()])
    assert batches == [6]
    assert [s[0]["text"] for s in compacted] == [s[0]["text"] for s in single]
    sampled = pipe({"formula": "Ba2TiO4"}, num_return_sequences=6, seed=0, max_sites=8)
    assert {s["structure"].composition for s in sampled} == {Composition("Ba2TiO4")}


def test_the_model_generation_config_sets_max_sites_and_refine_steps(tiny_model, monkeypatch):
    """A model's own settings travel with it: `max_sites` and `refine_steps` of its generation config apply
    unless the call sets them."""
    model, tokenizer = load_crystal_model(tiny_model)
    model.generation_config.max_sites, model.generation_config.refine_steps = 2, 3
    steps = []

    class Refiner:  # records the steps it is asked for; moves nothing
        def __call__(self, structures, num_inference_steps=10, **kwargs):
            steps.append(num_inference_steps)
            return type("Output", (), {"structures": structures, "symmetry_cases": None})()

        def set_progress_bar_config(self, **kwargs):
            pass

    Refiner.scheduler = None  # what marks a refiner object (not a folder or Hub id)
    pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer, refiner=Refiner())
    samples = pipe(8, seed=0, batch_size=8)
    assert max(len(s["structure"]) for s in samples) <= 2 and steps == [3]
    samples = pipe(8, seed=0, batch_size=8, max_sites=5, refine_steps=4)
    assert max(len(s["structure"]) for s in samples) > 2 and steps == [3, 4]
