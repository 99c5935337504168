"""How hf-crystal reads from the Hub: through the local cache, offline with a clear error, safetensors only.

Repos are fetched with `huggingface_hub` into its cache (`hf-crystal pull` fills it ahead of time); with
`HF_HUB_OFFLINE=1` everything already there loads and an id never downloaded fails with one message that
says to pull it while online. Weights load only from safetensors: pickle files (`pytorch_model.bin`,
`adapter_model.bin`) can run code when loaded, so a repo that has only those is refused unless the
caller opts in (`allow_pickle=True`). `trust_remote_code` is never passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants, snapshot_download

__all__ = ["HubOfflineError", "UnsafeWeightsError", "offline_errors", "snapshot"]


class HubOfflineError(OSError):
    """A repo that is needed offline but is not in the local Hub cache."""


class UnsafeWeightsError(OSError):
    """A model whose weights exist only as pickle files."""


def is_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def offline_errors(repo_id: str | Path) -> Iterator[None]:
    """Turn the libraries' errors for a repo missing from the cache in offline mode into one clear error
    (an inner one, e.g. for an adapter's base, is kept)."""
    try:
        yield
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError and transformers' OSError are both
        if (
            is_offline()
            and not Path(repo_id).exists()
            and not isinstance(err, UnsafeWeightsError | HubOfflineError)
        ):
            raise HubOfflineError(
                f"{repo_id} is not in the local Hub cache and HF_HUB_OFFLINE is set: run "
                f"`hf-crystal pull {repo_id}` while online (or unset HF_HUB_OFFLINE)"
            ) from err
        raise


def snapshot(repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> Path:
    """The local folder of a Hub repo in the cache, downloaded first unless offline."""
    with offline_errors(repo_id):
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision))
