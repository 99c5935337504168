"""The local Hub server (tests/hub_server.py) against the real client libraries.

Nothing is mocked: every call below is HTTP from huggingface_hub / transformers / datasets to 127.0.0.1, through the
`HF_ENDPOINT` that conftest.py sets.
"""

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    HfApi,
    HfFileSystem,
    ModelCard,
    ModelCardData,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


@pytest.fixture
def api(hub_server) -> HfApi:
    return HfApi()


def test_clients_use_the_local_hub(hub_server, api):
    import datasets

    assert constants.ENDPOINT == datasets.config.HF_ENDPOINT == hub_server.endpoint
    assert constants.HF_HUB_DISABLE_XET
    assert api.whoami()["name"] == "tester"


def test_upload_then_download_through_lfs(hub_server, api, tmp_path):
    repo_url = api.create_repo(hub_server.repo_id("files"))
    assert repo_url.startswith(hub_server.endpoint)
    repo_id = repo_url.repo_id
    api.create_repo(repo_id, exist_ok=True)  # the server answers 409, which the client accepts
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo(repo_id)

    weights = os.urandom(3000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(weights)
    (tmp_path / "sub" / "notes.txt").write_text("hello")
    commit = api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
    assert commit.commit_url.startswith(hub_server.endpoint)

    # *.safetensors goes through LFS (the repo's default .gitattributes says so), a small text file does not.
    files = {s.rfilename: s for s in api.model_info(repo_id, files_metadata=True).siblings}
    assert files["weights.safetensors"].lfs.size == len(weights) and files["sub/notes.txt"].lfs is None
    [info] = api.get_paths_info(repo_id, "weights.safetensors")
    assert info.lfs.sha256 == hashlib.sha256(weights).hexdigest()

    assert Path(hf_hub_download(repo_id, "weights.safetensors")).read_bytes() == weights
    snapshot = Path(snapshot_download(repo_id, revision=commit.oid))
    assert (snapshot / "sub" / "notes.txt").read_text() == "hello"
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "sub/notes.txt", "weights.safetensors"]
    with HfFileSystem().open(f"{repo_id}/weights.safetensors", block_size=100) as remote:  # Range requests
        remote.seek(1000)
        assert remote.read(50) == weights[1000:1050]

    assert api.upload_folder(folder_path=tmp_path, repo_id=repo_id).oid == commit.oid  # unchanged: no commit
    api.delete_folder("sub", repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "weights.safetensors"]


def test_revisions_branches_tags_and_history(hub_server, api):
    repo_id = api.create_repo(hub_server.repo_id("history")).repo_id
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes.txt", repo_id=repo_id)
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1", revision=first.oid)

    def read(revision: str | None = None) -> bytes:
        return Path(hf_hub_download(repo_id, "notes.txt", revision=revision)).read_bytes()

    assert (read(), read(second.oid), read(first.oid), read("v1")) == (b"v2", b"v2", b"v1", b"v1")
    commits = [c.commit_id for c in api.list_repo_commits(repo_id)]
    assert commits[:2] == [second.oid, first.oid] and len(commits) == 3  # + the initial commit
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second.oid)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]

    api.create_branch(repo_id, branch="dev", revision="v1")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="notes.txt", repo_id=repo_id, revision="dev")
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="notes.txt", repo_id=repo_id, create_pr=True)
    assert (read("dev"), read(pr.pr_revision), read()) == (b"dev", b"pr", b"v2")

    api.delete_file("notes.txt", repo_id)
    assert not api.file_exists(repo_id, "notes.txt") and api.file_exists(repo_id, "notes.txt", revision="v1")
    api.delete_tag(repo_id, tag="v1")
    assert not api.revision_exists(repo_id, "v1")


def test_errors_are_the_hub_ones(hub_server, api):
    repo_id = api.create_repo(hub_server.repo_id("errors")).repo_id
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        api.list_repo_tree(repo_id, path_in_repo="no-such-folder").__next__()
    api.delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, ".gitattributes")
    assert not api.repo_exists(repo_id)


def test_transformers_push_to_hub_then_from_pretrained(hub_server):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        vocab_size=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    repo_id = hub_server.repo_id("tiny-llama")
    model.push_to_hub(repo_id)

    loaded = AutoModelForCausalLM.from_pretrained(repo_id)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_datasets_push_to_hub_then_load_dataset(hub_server):
    from datasets import Dataset, DatasetDict, load_dataset

    rows = {"formula": ["NaCl", "MgO", "SiO2", "Fe2O3"], "n_atoms": [2, 2, 3, 5]}
    train, test = Dataset.from_dict(rows), Dataset.from_dict({"formula": ["CsCl"], "n_atoms": [2]})

    single_id = hub_server.repo_id("crystals")
    train.push_to_hub(single_id)  # parquet shards go through LFS
    assert load_dataset(single_id, split="train").to_dict() == rows

    splits_id = hub_server.repo_id("crystal-splits")
    DatasetDict({"train": train, "test": test}).push_to_hub(splits_id)
    loaded = load_dataset(splits_id)
    assert (loaded["train"].to_dict(), loaded["test"].to_dict()) == (rows, test.to_dict())


def test_cards_push_to_hub_then_load(hub_server, api):
    model_id = api.create_repo(hub_server.repo_id("card")).repo_id
    model_card = ModelCard.from_template(ModelCardData(license="mit", tags=["crystals"]), model_id=model_id)
    model_card.push_to_hub(model_id)
    assert ModelCard.load(model_id).data.tags == ["crystals"]
    assert api.model_info(model_id).card_data.license == "mit"

    dataset_id = api.create_repo(hub_server.repo_id("card"), repo_type="dataset").repo_id
    DatasetCard.from_template(DatasetCardData(license="cc-by-4.0", pretty_name="Crystals")).push_to_hub(
        dataset_id
    )
    assert DatasetCard.load(dataset_id).data.pretty_name == "Crystals"
    assert api.dataset_info(dataset_id).card_data.license == "cc-by-4.0"
