"""`pipeline("crystal-generation")`: crystals from a causal LM, as pymatgen structures.

Inputs:

- nothing, or a dict of conditions (formula, spacegroup, e_above_hull, formation_energy_per_atom,
  band_gap; optionally formula_units, see the class docstring): a list of `num_return_sequences` samples,
  prompted exactly as in training;
- a list of condition dicts: one such list per dict;
- an int N: N unconditional prompts, their samples in one flat list (N x `num_return_sequences`).

Each sample is a dict: `text` (what the model wrote), `structure` (a `Structure`, or None when the text
does not parse), `valid` (structural and compositional validity, SPEC 5), `error` (why it did not
parse), `conditions` (as the prompt stated them: the whole-cell formula, and `formula_units`, what
the formula condition meant) and `attempts` (samples drawn for this slot:
1, or more with `until_valid=True`; the sum over a result is what was generated). Nothing raises for
bad model output. With a refiner (`refiner=` at construction: a `CrystalRefinerPipeline`, folder or Hub
id; by default "auto": the refiner the model comes with, which only the embedded default model has, see
`hf_crystal.embedded`; None for none), each sample also carries `refined_structure` and `refined_valid`:
the LLM's structure moved by the FlowLLM refiner (`refine_steps` Euler steps, keeping the sample's space
group unless `symmetry_tolerance=None`; `refine_symmetry` says how), or None for a sample the
LLM did not write parseably (passed through untouched). For file formats use `structure.to(fmt="cif")` or
`hf_crystal.data.SampleWriter`.
Infill (masked element) is the separate task "crystal-infill" (`hf_crystal.pipeline_infill`).

Speed (benchmarks/bench_generation.py): `model.generate` runs with a key/value cache that appends in place
(`_AppendLayer`; transformers' DynamicLayer re-concatenates the whole cache every step), and rows that have
finished leave the batch between `generate` calls (`_generate`). Neither changes what is generated: greedy texts
are pinned by tests/test_generation_golden.py. At batch 64 most of a decoding step is then attention over the
cache (memory-bound), then the matmuls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from pymatgen.core import Composition
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    Pipeline,
    StoppingCriteria,
    set_seed,
)
from transformers.cache_utils import DynamicLayer

from hf_crystal import embedded
from hf_crystal.constraints import DEFAULT_MAX_SITES, CrystalConstraint, CrystalLogitsProcessor
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.prompts import condition_cells, generation_prompt, parse_conditions
from hf_crystal.text import try_decode
from hf_crystal.tokenization import prepare_for_batched_generation

__all__ = ["CrystalGenerationPipeline"]

logger = logging.getLogger(__name__)

# Gruver et al. sampled with temperature and top_p 0.9 (their script's default).
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_P = 0.9
# Resampling cap of `until_valid`: total samples per requested crystal.
DEFAULT_MAX_ATTEMPTS = 10
# A batch is compacted (finished rows dropped, `_generate`) once this fraction of its rows has finished.
_COMPACT_FRACTION = 1 / 8
# Spare room of the key/value buffers (`_AppendLayer`): half the length again, at least this many positions.
_KV_MIN_SPARE = 128


class _AppendLayer(DynamicLayer):
    """transformers' `DynamicLayer`, but appending in place into buffers with spare room.

    `DynamicLayer.update` concatenates (`torch.cat`) the whole cache with the new position at every step: with a
    batch of 64 and a few hundred positions that is tens of MB copied into a fresh allocation per layer and step,
    and it was most of the decoding time (benchmarks/bench_generation.py, issue 11). Here `keys` and `values` are
    views of buffers that grow by half their length when full; every other `DynamicLayer` method (crop, batch
    selection, beam reordering) still works on the views, and an `update` after one of them that replaced the views
    moves the states into new buffers. Same values as `DynamicLayer`, so generation is unchanged.
    """

    def __init__(self, **kwargs):
        super().__init__()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        buffers = self._buffers
        if not (length and self._in_buffers() and length + new <= buffers[0].shape[-2]):
            room = length + new + max(_KV_MIN_SPARE, (length + new) // 2)
            buffers = self._buffers = tuple(
                states.new_empty((*states.shape[:2], room, states.shape[-1]))
                for states in (key_states, value_states)
            )
            if length:
                buffers[0][:, :, :length].copy_(self.keys)
                buffers[1][:, :, :length].copy_(self.values)
        buffers[0][:, :, length : length + new].copy_(key_states)
        buffers[1][:, :, length : length + new].copy_(value_states)
        self.keys, self.values = buffers[0][:, :, : length + new], buffers[1][:, :, : length + new]
        return self.keys, self.values

    def _in_buffers(self) -> bool:
        """`keys` and `values` are still the views of the buffers (no other method replaced them)."""
        buffers = self._buffers
        return (
            buffers is not None
            and self.keys.data_ptr() == buffers[0].data_ptr()
            and self.values.data_ptr() == buffers[1].data_ptr()
            and self.keys.shape[:2] == buffers[0].shape[:2]
        )

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices`: one gather of the buffers (spare room included), instead of DynamicLayer's
        gather then a copy into new buffers at the next update."""
        length = self.get_seq_length()
        if not length or not self._in_buffers():
            return super().batch_select_indices(indices)
        self._buffers = tuple(buffer.index_select(0, indices.to(buffer.device)) for buffer in self._buffers)
        self.keys, self.values = self._buffers[0][:, :, :length], self._buffers[1][:, :, :length]

    def reset(self) -> None:
        self._buffers = None
        super().reset()


class _EnoughFinished(StoppingCriteria):
    """Stops `generate` (every row) once `enough` rows have written an EOS token, if rows are still going."""

    def __init__(self, eos: torch.Tensor, enough: int):
        self.eos, self.enough, self.finished = eos, enough, None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        self.finished = last if self.finished is None else self.finished | last
        count = int(self.finished.sum())
        return torch.full_like(last, self.enough <= count < len(last))


def _append_cache(model, generate_kwargs: dict) -> DynamicCache | None:
    """A `DynamicCache` for `model` whose full-attention layers are `_AppendLayer`s, or None when the call sets its
    own cache (or none) or the model has other layer kinds (sliding windows, ...): then generate builds its own."""
    configs = [model.generation_config, generate_kwargs.get("generation_config")]
    if any(
        generate_kwargs.get(key) is not None for key in ("cache", "past_key_values", "cache_implementation")
    ):
        return None
    if generate_kwargs.get("use_cache") is False or any(
        c is not None and (c.use_cache is False or c.cache_implementation is not None) for c in configs
    ):
        return None
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config DynamicCache cannot read: leave the cache to generate
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_AppendLayer() for _ in cache.layers]
    return cache


class CrystalGenerationPipeline(Pipeline):
    """Generate crystals, unconditionally or for text conditions, with a causal LM (see module docstring).

    Call parameters (also accepted at construction):
        num_return_sequences: samples per input (default 1).
        constrain: constrained decoding (default True): every sample is valid crystal text, a formula
            fixes the composition exactly (see `hf_crystal.constraints`).
        formula_units: what a formula condition means (`hf_crystal.prompts.cell_formulas`): "any" (default)
            number of formula units Z with at most `max_sites` atoms, Z drawn per sample from MP-20's
            frequencies (the most frequent one when greedy) and prompted and constrained as that whole cell;
            "cell" for the counts as given; an int for that Z. A condition dict may set its own.
        elements: restrict constrained decoding to these element symbols.
        max_sites: the most sites a constrained sample (and an "any" formula's cell) may have.
        until_valid: resample each invalid slot, at most `max_attempts` samples per slot (validity of the
            LLM's structure, before refinement).
        refine_steps: Euler steps of the refiner (default: the refiner's own default).
        symmetry_tolerance: the refiner keeps each sample's space group found at this tolerance (Å; default
            the refiner's, 0.1; None turns it off); each sample says how in `refine_symmetry`
            (`hf_crystal.symmetry.SYMMETRIZE_CASES`).
        seed: seeds the whole call (`transformers.set_seed`), for reproducible sampling.
        temperature: 0 means greedy; other generation parameters (top_p, top_k, max_new_tokens, ...) go
            to `model.generate`.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    # Unconstrained budget: 1024 new tokens hold about 55 sites with a one-character-per-digit tokenizer;
    # constrained generation takes the constraint's own budget unless max_new_tokens is given.
    _default_generation_config = GenerationConfig(
        do_sample=True, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, max_new_tokens=1024
    )

    def __init__(self, *args, refiner="auto", **kwargs):
        super().__init__(*args, **kwargs)
        prepare_for_batched_generation(self.tokenizer)
        if refiner == "auto":  # the refiner the model comes with: the embedded default adapter's, else none
            refiner = embedded.refiner_for(self.model)
        if refiner is not None and not hasattr(refiner, "scheduler"):  # a folder or Hub id
            from hf_crystal.refiner import CrystalRefinerPipeline

            refiner = CrystalRefinerPipeline.from_pretrained(refiner)
        if refiner is not None:
            refiner.set_progress_bar_config(disable=True)  # one bar per generation call is enough
        self.refiner = refiner

    def _sanitize_parameters(
        self,
        constrain=None,
        elements=None,
        max_sites=None,
        formula_units=None,
        until_valid=None,
        max_attempts=None,
        refine_steps=None,
        temperature=None,
        **generate_kwargs,
    ):
        preprocess = {}
        for key, value in (
            ("constrain", constrain),
            ("elements", elements),
            ("max_sites", max_sites),
            ("formula_units", formula_units),
        ):
            if value is not None:
                preprocess[key] = value
        forward = dict(generate_kwargs)  # symmetry_tolerance too, where given: None turns it off
        for key, value in (
            ("until_valid", until_valid),
            ("max_attempts", max_attempts),
            ("refine_steps", refine_steps),
        ):
            if value is not None:
                forward[key] = value
        if temperature == 0:  # greedy, the way users write it
            forward["do_sample"] = False
        elif temperature is not None:
            forward["temperature"] = temperature
        return preprocess, forward, {}

    def __call__(
        self, inputs: None | int | Mapping | list[Mapping] = None, seed: int | None = None, **kwargs
    ):
        """Generate crystals; see the module docstring for inputs and outputs."""
        if seed is not None:
            set_seed(seed)
        if inputs is None:
            inputs = {}
        if isinstance(inputs, int) and not isinstance(inputs, bool):
            if inputs < 1:
                raise ValueError(f"the number of crystals must be positive, got {inputs}")
            return [sample for samples in super().__call__([{}] * inputs, **kwargs) for sample in samples]
        if isinstance(inputs, Mapping) or (
            isinstance(inputs, list) and inputs and all(isinstance(c, Mapping) for c in inputs)
        ):
            return super().__call__(inputs, **kwargs)
        raise TypeError(
            "crystal-generation takes nothing or an int (unconditional), or a dict or list of dicts of "
            f"conditions; got {type(inputs).__name__} (for a masked element use the crystal-infill task)"
        )

    def preprocess(
        self, conditions: Mapping, constrain: bool = True, elements=None, max_sites=None, formula_units="any"
    ) -> dict:
        max_sites = DEFAULT_MAX_SITES if max_sites is None else max_sites
        cells, weights, formula_units = condition_cells(conditions, formula_units, max_sites)
        encoded = [self._encode(c, constrain, elements, max_sites) for c in cells]
        for item in encoded:
            if "formula" in item["conditions"]:
                item["conditions"]["formula_units"] = formula_units
        # With several whole cells to choose from, `_forward` draws one per sample (`_draw_cells`).
        choices = {"weights": torch.as_tensor(weights), "encoded": encoded} if len(encoded) > 1 else None
        return {**encoded[0], "choices": choices}

    def _encode(self, conditions: Mapping, constrain: bool, elements, max_sites: int) -> dict:
        """Prompt tokens, constraint and conditions as the prompt states them (whole-cell formula, rounded)."""
        prompt = generation_prompt(conditions)
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        constraint = None
        if constrain:
            composition = None
            if conditions.get("formula") is not None:
                composition = {el.symbol: int(n) for el, n in Composition(conditions["formula"]).items()}
            constraint = CrystalConstraint(
                elements=tuple(elements) if elements else None, composition=composition, max_sites=max_sites
            )
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "conditions": parse_conditions(prompt),
            "constraint": constraint,
        }

    def _forward(
        self,
        model_inputs: dict,
        until_valid: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        refine_steps: int | None = None,
        **kwargs,
    ) -> dict:
        """Generate `num_return_sequences` samples per prompt; with `until_valid`, resample invalid ones;
        with a refiner, refine every parsed sample of the batch in one go."""
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        constraints, conditions, choices = (model_inputs[k] for k in ("constraint", "conditions", "choices"))
        if not isinstance(constraints, list):  # an unbatched input
            constraints, conditions, choices = [constraints], [conditions], [choices]
        if constraints[0] is not None and "max_new_tokens" not in {**self._generate_kwargs, **kwargs}:
            # A budget that always fits a complete constrained crystal, instead of the generic default.
            cells = [e["constraint"] for c in choices if c is not None for e in c["encoded"]]
            kwargs["max_new_tokens"] = max(c.max_new_tokens for c in [*constraints, *cells])
        refine_options = (
            {"symmetry_tolerance": kwargs.pop("symmetry_tolerance")} if "symmetry_tolerance" in kwargs else {}
        )
        if refine_steps is not None:
            refine_options["num_inference_steps"] = refine_steps
        kwargs = self._prepare_generate_kwargs(kwargs)
        per_prompt = kwargs.get("num_return_sequences") or 1
        batch, repeat = input_ids.shape[0], per_prompt  # generated rows per row of input_ids
        if any(c is not None for c in choices):
            greedy = not self._get_set_generation_params(kwargs).get("do_sample")
            input_ids, attention_mask, constraints, conditions = self._draw_cells(
                input_ids, attention_mask, constraints, conditions, choices, per_prompt, greedy
            )
            kwargs, repeat = {**kwargs, "num_return_sequences": 1}, 1
        else:
            conditions = [c for c in conditions for _ in range(per_prompt)]
        rows = self._generate(input_ids, attention_mask, constraints, repeat, kwargs)
        attempts = [1] * len(rows)
        pending = list(range(len(rows))) if until_valid else []  # slots not yet known to be valid
        for attempt in range(1, max_attempts + 1):
            pending = [i for i in pending if not self._decode(rows[i])["valid"]]
            if not pending or attempt == max_attempts:
                break
            prompts = [i // repeat for i in pending]
            retry = {**kwargs, "num_return_sequences": 1}
            redone = self._generate(
                input_ids[prompts], attention_mask[prompts], [constraints[p] for p in prompts], 1, retry
            )
            for i, tokens in zip(pending, redone, strict=True):
                rows[i] = tokens
                attempts[i] += 1
        if pending:
            logger.warning("%d samples are still invalid after %d attempts each", len(pending), max_attempts)
        generated = pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        # Object arrays, which the pipeline's batching splits like a tensor: (batch, per_prompt).
        sample_conditions = np.empty(len(rows), dtype=object)
        sample_conditions[:] = conditions
        outputs = {
            "generated": generated.reshape(batch, per_prompt, -1),
            "attempts": torch.tensor(attempts).reshape(batch, per_prompt),
            "conditions": sample_conditions.reshape(batch, per_prompt),
        }
        if self.refiner is not None:
            refined, cases = np.empty(len(rows), dtype=object), np.empty(len(rows), dtype=object)
            refined[:], cases[:] = self._refine(rows, refine_options)
            outputs["refined"] = refined.reshape(batch, per_prompt)
            outputs["refine_symmetry"] = cases.reshape(batch, per_prompt)
        return outputs

    def _draw_cells(
        self, input_ids, attention_mask, constraints, conditions, choices, per_prompt: int, greedy: bool
    ):
        """One prompt row per sample: for a prompt with `choices` (the whole cells of a formula condition), a cell
        drawn by their weights (the likeliest when `greedy`), else the prompt itself. Returns left-padded input
        ids and attention mask, and the constraint and conditions of every row."""
        rows = []
        for i, options in enumerate(choices):
            if options is None:
                own = {"input_ids": input_ids[i][attention_mask[i].bool()], "constraint": constraints[i]}
                rows += [{**own, "conditions": conditions[i]}] * per_prompt
                continue
            weights = options["weights"]
            picks = (
                weights.argmax().repeat(per_prompt)
                if greedy
                else torch.multinomial(weights, per_prompt, replacement=True)
            )
            rows += [
                {**options["encoded"][j], "input_ids": options["encoded"][j]["input_ids"][0]} for j in picks
            ]
        ids = [row["input_ids"] for row in rows]
        pad = self.tokenizer.pad_token_id
        return (
            pad_sequence(ids, batch_first=True, padding_value=pad, padding_side="left").to(input_ids.device),
            pad_sequence([torch.ones_like(x) for x in ids], batch_first=True, padding_side="left").to(
                attention_mask.device
            ),
            [row["constraint"] for row in rows],
            [row["conditions"] for row in rows],
        )

    def _refine(self, rows: list, options: dict) -> tuple[list, list]:
        """The refined structure of each row and how its symmetry was kept (None without symmetry), both None
        where the LLM's text does not parse."""
        structures = [
            try_decode(self.tokenizer.decode(tokens, skip_special_tokens=True))[0] for tokens in rows
        ]
        parsed = [s for s in structures if s is not None]
        out = self.refiner(parsed, batch_size=max(len(parsed), 1), **options) if parsed else None
        refined = iter(out.structures if out else [])
        cases = iter((out.symmetry_cases or [None] * len(parsed)) if out else [])
        pairs = [(None, None) if s is None else (next(refined), next(cases)) for s in structures]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _generate(self, input_ids, attention_mask, constraints, per_prompt: int, kwargs: dict) -> list:
        """The new tokens of each sample of a left-padded prompt batch (`per_prompt` rows per prompt).

        Rows that have written EOS are dropped from the batch (`_compacting`): `generate` keeps computing a
        finished row (padding it) until the whole batch is done, so a batch whose lengths spread widely spends
        much of its time on finished rows. Here `generate` stops once enough rows have finished, and is called
        again on the others only, from the same cache; the constraint processor keeps their states. Decoding is
        unchanged: each row sees the same inputs, so greedy texts are those of one `generate` call."""
        kwargs = dict(kwargs)
        width = input_ids.shape[1]
        processor = None
        if constraints[0] is not None:
            processor = CrystalLogitsProcessor(self.tokenizer, constraints, width, per_prompt)
        budget, eos = self._compacting(kwargs)
        cache = _append_cache(self.model, kwargs)
        if cache is not None:
            kwargs["cache"] = cache
        if cache is None or budget is None:
            if processor is not None:
                kwargs["logits_processor"] = LogitsProcessorList(
                    [*kwargs.get("logits_processor", []), processor]
                )
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            return list(sequences[:, width:].cpu())
        rows: list = [None] * (input_ids.shape[0] * per_prompt)
        live = np.arange(len(rows))  # which samples the current batch rows are
        while True:
            stop = _EnoughFinished(eos, max(1, int(len(live) * _COMPACT_FRACTION)))
            call = {**kwargs, "max_new_tokens": budget - (input_ids.shape[1] - width)}
            call["stopping_criteria"] = [stop]
            if processor is not None:
                call["logits_processor"] = [processor]
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **call)
            if call.pop("num_return_sequences", None):  # rows were expanded by the first call
                attention_mask = attention_mask.repeat_interleave(per_prompt, dim=0)
            done = torch.isin(sequences[:, width:], eos).any(dim=1)
            if sequences.shape[1] - width >= budget:
                done[:] = True
            for i in np.flatnonzero(done.numpy()):
                rows[live[i]] = sequences[i, width:].cpu()
            keep = np.flatnonzero(~done.numpy())
            if not len(keep):
                return rows
            index = torch.from_numpy(keep)
            new = sequences.shape[1] - attention_mask.shape[1]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(sequences), new)], dim=1)
            input_ids, attention_mask, live = sequences[index], attention_mask[index], live[keep]
            cache.batch_select_indices(index)
            kwargs = {key: value for key, value in call.items() if key != "stopping_criteria"}
            if processor is not None:
                processor = processor.select(keep)

    def _compacting(self, kwargs: dict) -> tuple[int | None, torch.Tensor | None]:
        """(token budget, EOS ids) when finished rows may be dropped between `generate` calls, else (None, None):
        plain sampling or greedy search with a max_new_tokens budget, stopped by EOS only, nothing streamed or
        returned but the sequences, and no logits processor or stopping criterion of the caller's (which may
        keep per-row state)."""
        config = self.model.generation_config
        if kwargs.get("max_length") is not None or kwargs.get("generation_config") is not None:
            return None, None
        unsupported = (
            "min_length", "min_new_tokens", "stopping_criteria", "stop_strings", "logits_processor", "streamer",
            "assistant_model", "prompt_lookup_num_tokens", "max_time", "return_dict_in_generate", "output_scores",
            "output_logits", "prefix_allowed_tokens_fn", "begin_suppress_tokens", "exponential_decay_length_penalty",
            "guidance_scale", "low_memory",
        )  # fmt: skip
        if any(kwargs.get(key, getattr(config, key, None)) not in (None, 0, False) for key in unsupported):
            return None, None
        if (kwargs.get("num_beams") or config.num_beams or 1) != 1:
            return None, None
        budget = kwargs.get("max_new_tokens") or config.max_new_tokens
        eos = kwargs.get("eos_token_id", config.eos_token_id)
        if budget is None or eos is None:
            return None, None
        return int(budget), torch.tensor([eos] if isinstance(eos, int) else list(eos))

    def _decode(self, tokens: torch.Tensor) -> dict:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        structure, error = try_decode(text)
        return {
            "text": text,
            "structure": structure,
            "valid": structure is not None and validity_flags(structure)["valid"],
            "error": str(error) if error is not None else None,
        }

    def postprocess(self, model_outputs: dict) -> list[dict]:
        conditions = model_outputs["conditions"].reshape(-1)
        generated = model_outputs["generated"].reshape(-1, model_outputs["generated"].shape[-1])
        attempts = model_outputs["attempts"].reshape(-1).tolist()
        samples = [
            {**self._decode(tokens), "conditions": dict(asked), "attempts": n}
            for tokens, n, asked in zip(generated, attempts, conditions, strict=True)
        ]
        if "refined" in model_outputs:
            for sample, refined, case in zip(
                samples,
                model_outputs["refined"].reshape(-1),
                model_outputs["refine_symmetry"].reshape(-1),
                strict=True,
            ):
                sample["refined_structure"] = refined
                sample["refined_valid"] = refined is not None and validity_flags(refined)["valid"]
                sample["refine_symmetry"] = case
        return samples
