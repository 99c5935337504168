"""`hf-crystal push` and `hf-crystal pull`: Hub-shaped folders to and from the Hub."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def _cmd_push(args: argparse.Namespace) -> int:
    from hf_crystal.hub import folder_kind, push_folder

    kind = folder_kind(args.folder)  # refuses other folders before anything is created on the Hub
    commit = push_folder(
        args.folder, args.repo_id, repo_type=args.repo_type, revision=args.revision, private=args.private
    )
    print(f"pushed {kind} folder {args.folder} to {args.repo_id}: commit {commit.oid}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from hf_crystal.hub import pull

    print(pull(args.repo_id, repo_type=args.repo_type, revision=args.revision))
    return 0


def add_parsers(subparsers) -> None:
    """Add `push` and `pull` to the CLI's subparsers."""
    push = subparsers.add_parser(
        "push",
        help="upload a dataset, base model, adapter or refiner folder in one commit",
        description="Upload a Hub-shaped folder (as hf-crystal writes them) to a Hub repo in one commit; "
        "prints the commit id. Checkpoints and loss logs stay local.",
    )
    push.add_argument("folder", help="dataset, base model, adapter or refiner folder")
    push.add_argument("repo_id", help="USER/NAME")
    push.add_argument("--repo-type", choices=["model", "dataset"], help="default: from the folder's kind")
    push.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.set_defaults(func=_cmd_push)

    pull = subparsers.add_parser(
        "pull",
        help="download a repo into the local Hub cache (for offline use) and print its path",
        description="Fill the local Hub cache with a repo (huggingface_hub.snapshot_download).",
    )
    pull.add_argument("repo_id", help="USER/NAME")
    pull.add_argument("--repo-type", choices=["model", "dataset"], default="model")
    pull.add_argument("--revision", help="branch, tag or commit (default main)")
    pull.set_defaults(func=_cmd_pull)
