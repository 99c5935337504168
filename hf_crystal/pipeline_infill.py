"""`pipeline("crystal-infill")`: which element should replace a masked one (Gruver et al.'s infill task).

As `fill-mask` sits beside `text-generation`, this task sits beside "crystal-generation": the input is
a structure (a `Structure` or CIF text, or a list of them) and the element whose sites are masked; the
model scores every candidate element as the completion "symbol + EOS" of the infill prompt (the prompt
runs once, then every candidate's continuation in one batch on its key/value cache), and the answer ranks
the candidates by probability, normalised over the candidates. The masked element itself is left out unless
asked for.

Output per structure: `{"masked_element": str, "candidates": [{"element", "probability"[, "structure"]}]}`,
best first, with the substituted structure when `return_structures=True`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from pymatgen.core import Structure
from torch.nn.utils.rnn import pad_sequence
from transformers import Pipeline

from hf_crystal import prompts
from hf_crystal.crystal_format import format_of
from hf_crystal.text import ELEMENT_SYMBOLS, encode
from hf_crystal.tokenization import prepare_for_batched_generation

__all__ = ["CrystalInfillPipeline"]

DEFAULT_NUM_CANDIDATES = 10
# Most bytes of prompt key/value cache repeated for one batch of candidates (`_score`).
_CACHE_BUDGET = 1 << 30


class CrystalInfillPipeline(Pipeline):
    """Rank replacement elements for a masked element of a structure (see module docstring).

    Call parameters (also accepted at construction):
        mask_element: the element whose sites are masked (required).
        candidates: the element symbols to rank (default: all 118).
        exclude_masked: leave the masked element out of the candidates (default True).
        num_candidates: how many of the best candidates to return (default 10).
        return_structures: add each candidate's substituted structure (default False).
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        prepare_for_batched_generation(self.tokenizer)

    def _sanitize_parameters(
        self,
        mask_element=None,
        candidates=None,
        exclude_masked=None,
        num_candidates=None,
        return_structures=None,
    ):
        preprocess = {}
        for key, value in (("mask_element", mask_element), ("candidates", candidates)):
            if value is not None:
                preprocess[key] = value
        if exclude_masked is not None:
            preprocess["exclude_masked"] = exclude_masked
        postprocess = {}
        if num_candidates is not None:
            postprocess["num_candidates"] = num_candidates
        if return_structures is not None:
            postprocess["return_structures"] = return_structures
        return preprocess, {}, postprocess

    def __call__(self, inputs: Structure | str | list[Structure | str], **kwargs):
        """Rank candidates for one structure (a dict) or a list of structures (a list of dicts)."""
        if isinstance(inputs, list):
            return super().__call__([_structure(item) for item in inputs], **kwargs)
        return super().__call__(_structure(inputs), **kwargs)

    def preprocess(
        self,
        structure: Structure,
        mask_element: str | None = None,
        candidates: Sequence[str] | None = None,
        exclude_masked: bool = True,
    ) -> dict:
        if mask_element is None:
            raise ValueError("crystal-infill needs mask_element=, the element whose sites are masked")
        symbols = list(ELEMENT_SYMBOLS if candidates is None else candidates)
        unknown = sorted(set(symbols) - set(ELEMENT_SYMBOLS))
        if unknown:
            raise ValueError(f"candidates must be element symbols; unknown: {unknown}")
        if exclude_masked:
            symbols = [s for s in symbols if s != mask_element]
        if not symbols:
            raise ValueError("no candidate element left to rank")
        crystal_format = format_of(self.model.config)  # the format the model was trained on
        text = encode(structure, format=crystal_format)
        prompt = prompts.infill_prompt(prompts.mask_element(text, mask_element, crystal_format))
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "candidates": symbols,
            "structure": structure,
            "mask_element": mask_element,
        }

    def _forward(self, model_inputs: dict) -> dict:
        """log p(symbol + EOS | prompt) of each candidate (`_score`, per prompt): (batch, n_candidates)."""
        candidate_lists = model_inputs["candidates"]
        if not isinstance(candidate_lists[0], list):  # an unbatched input
            candidate_lists = [candidate_lists]
        rows = []
        for ids, mask, symbols in zip(
            model_inputs["input_ids"], model_inputs["attention_mask"], candidate_lists, strict=True
        ):
            rows.append(self._score(ids[mask.bool()], symbols))
        width = max(len(r) for r in rows)
        scores = torch.full((len(rows), width), -torch.inf)
        for i, row in enumerate(rows):
            scores[i, : len(row)] = row
        return {
            "log_probs": scores,
            "candidates": model_inputs["candidates"],
            "structure": model_inputs["structure"],
            "mask_element": model_inputs["mask_element"],
        }

    def _score(self, prompt: torch.Tensor, symbols: list[str]) -> torch.Tensor:
        """log p(symbol + EOS | prompt) per symbol. The prompt runs once; the candidates' continuations then run
        in one batch on its key/value cache (in chunks of at most `_CACHE_BUDGET` bytes of repeated cache): the
        scores of running prompt + completion per candidate, at a fraction of the cost."""
        out = self.model(input_ids=prompt[None].to(self.device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
        completions = [torch.tensor(self._completion_ids(s)) for s in symbols]
        scores = first[torch.stack([ids[0] for ids in completions])]  # the first token follows the prompt
        # Each continuation feeds its completion but the last token and predicts the completion but the first.
        inputs = pad_sequence([ids[:-1] for ids in completions], True, self.tokenizer.pad_token_id)
        targets = pad_sequence([ids[1:] for ids in completions], True)
        mask = pad_sequence([torch.ones(len(ids) - 1, dtype=torch.long) for ids in completions], True)
        per_candidate = sum(t.nbytes for layer in out.cache.layers for t in (layer.keys, layer.values))
        chunk = max(1, _CACHE_BUDGET // max(per_candidate, 1))
        for lo in range(0, len(completions), chunk):
            rows = slice(lo, lo + chunk)
            n = len(inputs[rows])
            attention = torch.cat([mask.new_ones(n, len(prompt)), mask[rows]], dim=1)
            logits = self.model(
                input_ids=inputs[rows].to(self.device),
                attention_mask=attention.to(self.device),
                cache=_repeated(out.cache, n),
            ).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
            token_lp = log_probs.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
            scores[rows] += (token_lp * mask[rows]).sum(-1)
        return scores

    def _completion_ids(self, symbol: str) -> list[int]:
        """Token ids of `symbol` then EOS, as tokenized after the prompt's closing newline."""
        prefix = self.tokenizer(":\n", add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(":\n" + symbol, add_special_tokens=False)["input_ids"]
        return [*(ids[len(prefix) :] if ids[: len(prefix)] == prefix else ids), self.tokenizer.eos_token_id]

    def postprocess(
        self,
        model_outputs: dict,
        num_candidates: int = DEFAULT_NUM_CANDIDATES,
        return_structures: bool = False,
    ) -> dict:
        symbols, structure, masked = (model_outputs[k] for k in ("candidates", "structure", "mask_element"))
        probs = torch.softmax(model_outputs["log_probs"].reshape(-1)[: len(symbols)], dim=0)
        ranked = []
        for i in torch.argsort(probs, descending=True)[:num_candidates].tolist():
            candidate = {"element": symbols[i], "probability": float(probs[i])}
            if return_structures:
                substituted = structure.copy()
                substituted.replace_species({masked: symbols[i]})
                candidate["structure"] = substituted
            ranked.append(candidate)
        return {"masked_element": masked, "candidates": ranked}


def _repeated(cache, n: int):
    """A batch-1 key/value cache as `n` rows that are views of its tensors (no copy: each layer's first update
    writes the only one); `cache` itself is left unchanged."""
    repeated = copy.copy(cache)
    repeated.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in repeated.layers:
        layer.keys, layer.values = layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1)
    return repeated


def _structure(item: Structure | str) -> Structure:
    if isinstance(item, Structure):
        return item
    if isinstance(item, str):
        return Structure.from_str(item, fmt="cif")
    raise TypeError(f"crystal-infill takes Structures or CIF text, got {type(item).__name__}")
