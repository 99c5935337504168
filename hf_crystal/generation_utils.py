"""The batched generate loop of `pipeline("crystal-generation")`: a key/value cache that appends in place, a
stopping criterion that ends a `generate` call once enough rows have finished, and the loop that drops finished
rows between calls (as transformers keeps `generation/utils.py` apart from its pipelines).

Neither changes what is generated: each row sees the same inputs as in one plain `generate` call, so greedy
texts are those of `model.generate` (tests/test_generation_golden.py pins them). Speed: docs/benchmarks.md.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteria
from transformers.cache_utils import DynamicLayer

from hf_crystal.constraints import CrystalLogitsProcessor

__all__ = ["AppendLayer", "EnoughFinished", "append_cache", "generate_rows", "prefill_shared_prompts"]

# A batch is compacted (finished rows dropped, `generate_rows`) once this fraction of its rows has finished.
_COMPACT_FRACTION = 1 / 8
# Spare room of the key/value buffers (`AppendLayer`): half the length again, at least this many positions.
_KV_MIN_SPARE = 128


class AppendLayer(DynamicLayer):
    """transformers' `DynamicLayer`, but appending in place into buffers with spare room.

    `DynamicLayer.update` concatenates (`torch.cat`) the whole cache with the new position at every step: with a
    batch of 64 and a few hundred positions that is tens of MB copied into a fresh allocation per layer and step,
    and it was most of the decoding time (benchmarks/bench_generation.py). Here `keys` and `values` are
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


class EnoughFinished(StoppingCriteria):
    """Stops `generate` (every row) once `enough` rows have written an EOS token, if rows are still going."""

    def __init__(self, eos: torch.Tensor, enough: int):
        self.eos, self.enough, self.finished = eos, enough, None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        self.finished = last if self.finished is None else self.finished | last
        count = int(self.finished.sum())
        return torch.full_like(last, self.enough <= count < len(last))


def append_cache(model, generate_kwargs: dict) -> DynamicCache | None:
    """A `DynamicCache` for `model` whose full-attention layers are `AppendLayer`s, or None when the call sets its
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
    cache.layers = [AppendLayer() for _ in cache.layers]
    return cache


def prefill_shared_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache) -> bool:
    """Fill `cache` with every row's prompt but its last token, running each distinct prompt row through the model
    once and copying its keys and values to the rows that repeat it; False (nothing done) when no row repeats.

    The rows of a pipeline call are one prompt per sample, so an unconditional batch is one prompt many times
    over: its prefill, computed per row, cost as much as a third of the generation of a short text (Wyckoff
    text at batch 64, benchmarks/bench_generation.py). `generate`, given the cache, computes the last prompt
    token of every row, as it does when continuing a batch (`generate_rows`); positions are those `generate`
    gives a left-padded batch.
    """
    width = input_ids.shape[1]
    unique, inverse = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
    if width < 2 or len(unique) == len(input_ids):
        return False
    ids, mask = unique[:, : width - 1], unique[:, width : 2 * width - 1]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    cache.batch_select_indices(inverse)
    return True


def generate_rows(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    processor: CrystalLogitsProcessor | None,
    generate_kwargs: dict,
) -> list[torch.Tensor]:
    """The new tokens of each row of a left-padded prompt batch: one row per sample, so `generate_kwargs` must
    not ask for `num_return_sequences` > 1.

    Rows that have written EOS leave the batch: `generate` keeps computing a finished row (padding it) until the
    whole batch is done, so a batch whose lengths spread widely spends much of its time on finished rows. Here
    `generate` stops once enough rows have finished and is called again on the others only, from the same
    cache; the constraint `processor` keeps their states (`select`). Rows with the same prompt share its
    prefill (`prefill_shared_prompts`).

    Args:
        model: A causal LM.
        input_ids (`torch.LongTensor` of shape `(batch, width)`): Left-padded prompts.
        attention_mask (`torch.LongTensor` of shape `(batch, width)`): Their mask.
        processor (`CrystalLogitsProcessor`, *optional*): Constrained decoding, one constraint per row.
        generate_kwargs (`dict`): Passed on to `model.generate`.

    Returns:
        `list[torch.LongTensor]`: per row, the generated tokens (EOS and padding included).
    """
    kwargs = dict(generate_kwargs)
    if (kwargs.get("num_return_sequences") or 1) != 1:
        raise ValueError("generate_rows takes one row per sample: expand the prompts, num_return_sequences=1")
    width = input_ids.shape[1]
    budget, eos = _compacting(model, kwargs)
    cache = append_cache(model, kwargs)
    if cache is not None:
        kwargs["cache"] = cache
    if cache is None or budget is None:
        if processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), processor])
        sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return list(sequences[:, width:].cpu())
    rows: list = [None] * input_ids.shape[0]
    live = np.arange(len(rows))  # which samples the current batch rows are
    prefill_shared_prompts(model, input_ids, attention_mask, cache)
    while True:
        stop = EnoughFinished(eos, max(1, int(len(live) * _COMPACT_FRACTION)))
        call = {
            **kwargs,
            "max_new_tokens": budget - (input_ids.shape[1] - width),
            "stopping_criteria": [stop],
        }
        if processor is not None:
            call["logits_processor"] = [processor]
        sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, **call)
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
        if processor is not None:
            processor = processor.select(keep)


def _compacting(model, kwargs: dict) -> tuple[int | None, torch.Tensor | None]:
    """(token budget, EOS ids) when finished rows may be dropped between `generate` calls, else (None, None):
    plain sampling or greedy search with a max_new_tokens budget, stopped by EOS only, nothing streamed or
    returned but the sequences, and no logits processor or stopping criterion of the caller's (which may
    keep per-row state)."""
    config = model.generation_config
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
