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
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = ["HubOfflineError", "SourceNotFoundError", "UnsafeWeightsError", "offline_errors", "snapshot"]


class HubOfflineError(OSError):
    """A repo that is needed offline but is not in the local Hub cache."""


class SourceNotFoundError(FileNotFoundError):
    """Neither a local folder nor a valid Hub repo id (e.g. a mistyped path)."""


class UnsafeWeightsError(OSError):
    """A model whose weights exist only as pickle files."""


def is_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def offline_errors(repo_id: str | Path) -> Iterator[None]:
    """Turn the libraries' errors for a repo missing from the cache in offline mode, and for a name that is
    neither a folder nor a repo id, into one clear error each (an inner one, e.g. for an adapter's base, is
    kept)."""
    try:
        yield
    except (OSError, HFValidationError) as err:  # transformers re-raises the Hub's errors as OSError
        if (
            isinstance(err, UnsafeWeightsError | HubOfflineError | SourceNotFoundError)
            or Path(repo_id).exists()
        ):
            raise
        try:
            validate_repo_id(str(repo_id))
        except HFValidationError as invalid:
            raise SourceNotFoundError(
                f"no folder {repo_id}, and it is not a Hub repo id ({invalid}): give an existing folder or a "
                "repo id like user/name"
            ) from None
        if is_offline():
            raise HubOfflineError(
                f"{repo_id} is not in the local Hub cache and HF_HUB_OFFLINE is set: run "
                f"`hf-crystal pull {repo_id}` while online (or unset HF_HUB_OFFLINE)"
            ) from err
        raise


def snapshot(repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> Path:
    """The local folder of a Hub repo in the cache, downloaded first unless offline."""
    with offline_errors(repo_id):
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision))
