"""`pipeline("crystal-generation")`: crystals from a causal LM, as pymatgen structures.

Inputs, one call of one kind:

- nothing or an int N: N unconditional samples;
- a dict of conditions (formula, spacegroup, e_above_hull, formation_energy_per_atom, band_gap) or a
  list of dicts: `num_return_sequences` samples per dict, prompted exactly as in training;
- a `Structure` or CIF text with `mask_element=`: infill, the model's probabilities for the element
  that replaces the masked one (optionally with the substituted structures).

Each generated sample comes back as a dict, parse failures included (with their error); nothing
raises for bad model output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from pymatgen.core import Composition, Structure
from pymatgen.io.cif import CifWriter
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessorList, Pipeline, set_seed
from transformers.pipelines import PIPELINE_REGISTRY

from hf_crystal.constraints import CrystalConstraint, CrystalLogitsProcessor
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.prompts import generation_prompt, infill_prompt, mask_element, parse_conditions
from hf_crystal.text import ELEMENT_SYMBOLS, encode, try_decode

__all__ = ["TASK", "CrystalGenerationPipeline"]

logger = logging.getLogger(__name__)

TASK = "crystal-generation"
# Gruver et al. sampled with temperature and top_p 0.9 (their script's default).
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_P = 0.9
# Resampling cap of `until_valid`: total samples per requested crystal.
DEFAULT_MAX_ATTEMPTS = 10


class CrystalGenerationPipeline(Pipeline):
    """Generate crystals (unconditional, conditional) or rank infill elements with a causal LM."""

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
    _non_generation_params = ("num_return_sequences",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer.padding_side = "left"  # batched generation continues every prompt at the same column
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.last_run: dict[str, int] = {}

    def _sanitize_parameters(
        self, constrain=None, num_candidates=None, return_structures=None, temperature=None, **generate_kwargs
    ):
        forward: dict[str, Any] = dict(generate_kwargs)
        if constrain is not None:
            forward["constrain"] = constrain
        if temperature is not None:
            if temperature == 0:  # greedy, the way users write it
                forward["do_sample"] = False
            else:
                forward["temperature"] = temperature
        postprocess = {}
        if num_candidates is not None:
            postprocess["num_candidates"] = num_candidates
        if return_structures is not None:
            postprocess["return_structures"] = return_structures
        return {}, forward, postprocess

    def __call__(
        self,
        inputs: None | int | Mapping | list | Structure | str = None,
        *,
        num_return_sequences: int = 1,
        elements: list[str] | None = None,
        max_sites: int | None = None,
        mask_element: str | None = None,
        until_valid: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        seed: int | None = None,
        **kwargs,
    ):
        """Generate; see the module docstring for inputs. Returns a list of sample dicts (a list of
        lists for a list of condition dicts), or the infill answer(s).

        Args:
            num_return_sequences: samples per condition dict (for an int input, the int wins).
            elements: restrict constrained decoding to these element symbols.
            max_sites: the most sites a constrained sample may have.
            mask_element: the element to mask for infill inputs.
            until_valid: resample each slot until its sample is valid, at most `max_attempts` times;
                `self.last_run` reports what it took.
            seed: seed for reproducible sampling.
            **kwargs: `constrain` (default True), generation parameters (temperature, top_p, top_k,
                max_new_tokens, ...), `batch_size`, and for infill `num_candidates`, `return_structures`.
        """
        if seed is not None:
            set_seed(seed)
        if isinstance(inputs, Structure | str) or (
            isinstance(inputs, list) and inputs and not isinstance(inputs[0], Mapping)
        ):
            return self._infill(inputs, mask_element, **kwargs)
        if mask_element is not None:
            raise ValueError("mask_element is for infill: pass a Structure or CIF text as input")

        groups = self._condition_groups(inputs, num_return_sequences)
        jobs = [self._generation_job(c, elements, max_sites) for c, n in groups for _ in range(n)]
        results = list(super().__call__(jobs, **kwargs))
        attempts = [1] * len(jobs)
        if until_valid:
            for _ in range(max_attempts - 1):
                redo = [i for i, r in enumerate(results) if not r["valid"]]
                if not redo:
                    break
                for i, result in zip(redo, super().__call__([jobs[i] for i in redo], **kwargs), strict=True):
                    results[i] = result
                    attempts[i] += 1
        for result, n in zip(results, attempts, strict=True):
            result["attempts"] = n
        self.last_run = {
            "requested": len(jobs),
            "generated": sum(attempts),
            "parsed": sum(r["structure"] is not None for r in results),
            "valid": sum(r["valid"] for r in results),
        }
        if until_valid and self.last_run["valid"] < len(jobs):
            logger.warning(
                "%d of %d samples still invalid after %d attempts each",
                len(jobs) - self.last_run["valid"],
                len(jobs),
                max_attempts,
            )
        if isinstance(inputs, list):
            out, start = [], 0
            for _, n in groups:
                out.append(results[start : start + n])
                start += n
            return out
        return results

    @staticmethod
    def _condition_groups(inputs, num_return_sequences: int) -> list[tuple[dict, int]]:
        if inputs is None:
            return [({}, num_return_sequences)]
        if isinstance(inputs, int) and not isinstance(inputs, bool):
            if inputs < 1:
                raise ValueError(f"the number of crystals must be positive, got {inputs}")
            return [({}, inputs)]
        if isinstance(inputs, Mapping):
            return [(dict(inputs), num_return_sequences)]
        if isinstance(inputs, list) and all(isinstance(c, Mapping) for c in inputs):
            return [(dict(c), num_return_sequences) for c in inputs]
        raise TypeError(
            "crystal-generation takes nothing or an int (unconditional), a dict or list of dicts of conditions, "
            f"or a Structure / CIF text with mask_element= (infill); got {type(inputs).__name__}"
        )

    @staticmethod
    def _generation_job(conditions: dict, elements, max_sites) -> dict:
        prompt = generation_prompt(conditions)  # validates the conditions
        composition = None
        if conditions.get("formula") is not None:
            composition = {el.symbol: int(n) for el, n in Composition(conditions["formula"]).items()}
        options = {"max_sites": max_sites} if max_sites is not None else {}
        constraint = CrystalConstraint(
            elements=tuple(elements) if elements else None, composition=composition, **options
        )
        # The conditions as the prompt states them (formula with all counts, floats rounded).
        used = parse_conditions(prompt)
        return {"task": "generation", "prompt": prompt, "conditions": used, "constraint": constraint}

    def _infill(self, inputs, element: str | None, **kwargs):
        if element is None:
            raise ValueError("infill needs mask_element=, the element whose sites are masked")
        single = not isinstance(inputs, list)
        jobs = []
        for item in [inputs] if single else inputs:
            structure = Structure.from_str(item, fmt="cif") if isinstance(item, str) else item
            if not isinstance(structure, Structure):
                raise TypeError(f"infill inputs are Structures or CIF text, got {type(item).__name__}")
            prompt = infill_prompt(mask_element(encode(structure), element))
            jobs.append({"task": "infill", "prompt": prompt, "structure": structure, "element": element})
        results = list(super().__call__(jobs, **kwargs))
        return results[0] if single else results

    def preprocess(self, job: dict) -> dict:
        encoded = self.tokenizer(job["prompt"], return_tensors="pt", add_special_tokens=False)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "job": job}

    def _forward(self, model_inputs: dict, constrain: bool = True, **generate_kwargs) -> dict:
        jobs = model_inputs["job"] if isinstance(model_inputs["job"], list) else [model_inputs["job"]]
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        if jobs[0]["task"] == "infill":
            return {"log_probs": self._element_log_probs(input_ids, attention_mask), "job": jobs}
        if (
            constrain
            and "max_new_tokens" not in generate_kwargs
            and "max_new_tokens" not in self._generate_kwargs
        ):
            # A budget that always fits a complete constrained crystal, instead of the generic default.
            generate_kwargs["max_new_tokens"] = max(job["constraint"].max_new_tokens for job in jobs)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        if constrain:
            processor = CrystalLogitsProcessor(
                self.tokenizer, [job["constraint"] for job in jobs], prompt_length=input_ids.shape[1]
            )
            generate_kwargs["logits_processor"] = LogitsProcessorList(
                [*generate_kwargs.get("logits_processor", []), processor]
            )
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        return {"generated": sequences[:, input_ids.shape[1] :], "job": jobs}

    def _candidate_ids(self) -> list[list[int]]:
        """Token ids of each element symbol as a completion (symbol then EOS), tokenized after a newline."""
        if not hasattr(self, "_candidates"):
            prefix = self.tokenizer(":\n", add_special_tokens=False)["input_ids"]
            self._candidates = []
            for symbol in ELEMENT_SYMBOLS:
                ids = self.tokenizer(":\n" + symbol, add_special_tokens=False)["input_ids"]
                tail = ids[len(prefix) :] if ids[: len(prefix)] == prefix else ids
                self._candidates.append([*tail, self.tokenizer.eos_token_id])
        return self._candidates

    def _element_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """log p(symbol + EOS | prompt) of every element, shape (batch, 118): one forward per prompt."""
        candidates = self._candidate_ids()
        width = max(len(c) for c in candidates)
        pad = self.tokenizer.pad_token_id
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = ids[mask.bool()]
            seq = torch.full((len(candidates), len(prompt) + width), pad, dtype=torch.long)
            seq_mask = torch.zeros_like(seq)
            seq[:, : len(prompt)] = prompt
            seq_mask[:, : len(prompt)] = 1
            for i, cand in enumerate(candidates):
                seq[i, len(prompt) : len(prompt) + len(cand)] = torch.tensor(cand)
                seq_mask[i, len(prompt) : len(prompt) + len(cand)] = 1
            logits = self.model(input_ids=seq.to(self.device), attention_mask=seq_mask.to(self.device)).logits
            log_probs = torch.log_softmax(logits[:, len(prompt) - 1 : -1].float(), dim=-1)
            targets = seq[:, len(prompt) :].to(self.device)
            token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * seq_mask[
                :, len(prompt) :
            ].to(self.device)
            rows.append(token_lp.sum(-1).cpu())
        return torch.stack(rows)

    def postprocess(self, model_outputs: dict, num_candidates: int = 10, return_structures: bool = False):
        job = model_outputs["job"]
        job = job[0] if isinstance(job, list) else job
        if job["task"] == "infill":
            probs = torch.softmax(model_outputs["log_probs"].reshape(-1), dim=0)
            top = torch.argsort(probs, descending=True)[:num_candidates]
            candidates = []
            for i in top.tolist():
                candidate = {"element": ELEMENT_SYMBOLS[i], "probability": float(probs[i])}
                if return_structures:
                    mutated = job["structure"].copy()
                    mutated.replace_species({job["element"]: ELEMENT_SYMBOLS[i]})
                    candidate["structure"] = mutated
                candidates.append(candidate)
            return {"masked_element": job["element"], "candidates": candidates}
        text = self.tokenizer.decode(model_outputs["generated"].reshape(-1), skip_special_tokens=True)
        structure, error = try_decode(text)
        return {
            "text": text,
            "structure": structure,
            "cif": str(CifWriter(structure)) if structure is not None else None,
            "valid": structure is not None and validity_flags(structure)["valid"],
            "error": str(error) if error is not None else None,
            "conditions": job["conditions"],
        }


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=CrystalGenerationPipeline, pt_model=AutoModelForCausalLM
)
