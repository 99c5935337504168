"""Loading a crystal language model (full model or LoRA adapter) by folder or Hub id, safetensors only."""

from __future__ import annotations

from pathlib import Path

from hf_crystal import embedded
from hf_crystal.hub_access import UnsafeWeightsError, offline_errors

__all__ = ["load_crystal_model"]


def load_crystal_model(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    *,
    allow_pickle: bool = False,
    merge: bool = False,
    base: str | Path | None = None,
    **model_kwargs,
):
    """(model, tokenizer) from a full model or a LoRA adapter, as a local folder or a Hub id.

    Hub ids of the models embedded in the package (`hf_crystal.embedded`) load from their folders, offline,
    unless `revision` names another revision than "main"; such a model is named by its Hub id
    (`model.name_or_path`). For an adapter, the base comes from its adapter_config (at the base revision
    recorded there; an embedded base from the package) and `revision` pins the adapter only; the adapter's
    own tokenizer is used when it ships one, and `merge=True` merges it into the base (a plain model, faster
    to run). `base` (folder or Hub id, at its main revision) puts an adapter on another base than the one its
    adapter_config names, e.g. an earlier training stage of it. (transformers' `pipeline(model=ADAPTER,
    revision=R)` applies R to the base repo too and always takes the base's tokenizer: pass the result of this
    function to `pipeline` instead.)
    Weights load only from safetensors (`UnsafeWeightsError` otherwise) unless `allow_pickle`; offline,
    a repo missing from the cache raises `HubOfflineError` (see `hf_crystal.hub_access`).
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import find_adapter_config_file

    folder = embedded.embedded_folder(path_or_repo_id, revision)
    source, revision = (str(folder), None) if folder is not None else (str(path_or_repo_id), revision)
    model_kwargs = {"use_safetensors": None if allow_pickle else True, **model_kwargs}
    with offline_errors(source):
        adapter = find_adapter_config_file(source, revision=revision) is not None
        weights = (
            ("adapter_model.safetensors",)
            if adapter
            else ("model.safetensors", "model.safetensors.index.json")
        )
        if not allow_pickle and not any(_has_file(source, revision, name) for name in weights):
            pickles = (
                ("adapter_model.bin",) if adapter else ("pytorch_model.bin", "pytorch_model.bin.index.json")
            )
            if any(_has_file(source, revision, name) for name in pickles):
                raise UnsafeWeightsError(_PICKLE_ONLY.format(source=source))
        if base is not None and not adapter:
            raise ValueError(f"base= puts an adapter on another base, but {source} is not an adapter")
        if not adapter:
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        else:
            # As peft's AutoPeftModelForCausalLM, with the base's Hub id resolved like any other.
            config = PeftConfig.from_pretrained(source, revision=revision)
            base_source, base_revision = (
                embedded.resolve(str(base), None)
                if base is not None
                else embedded.resolve(config.base_model_name_or_path, config.revision)
            )
            with offline_errors(base_source):
                base_model = AutoModelForCausalLM.from_pretrained(
                    base_source, revision=base_revision, **model_kwargs
                )
            own_tokenizer = _has_file(source, revision, "tokenizer_config.json")
            tokenizer = (
                AutoTokenizer.from_pretrained(source, revision=revision)
                if own_tokenizer
                else AutoTokenizer.from_pretrained(base_source, revision=base_revision)
            )
            if len(tokenizer) > base_model.get_input_embeddings().weight.shape[0]:
                base_model.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(base_model, source, revision=revision, config=config)
            if merge:
                model = model.merge_and_unload()
    if folder is not None:
        model.name_or_path = model.config.name_or_path = str(path_or_repo_id)
    return model, tokenizer


_PICKLE_ONLY = (
    "{source} has no safetensors weights, only pickle files, which can run code when loaded; hf-crystal "
    "loads safetensors only. If you trust the source, pass allow_pickle=True (hf-crystal: --allow-pickle)."
)


def _has_file(source: str, revision: str | None, name: str) -> bool:
    from transformers.utils import cached_file

    return (
        cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False) is not None
    )
