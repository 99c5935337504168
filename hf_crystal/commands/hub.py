"""`hf-crystal push`, `pull` and `card`: Hub-shaped folders to and from the Hub, metrics onto cards."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_crystal.commands.errors import UsageError

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


def _cmd_card(args: argparse.Namespace) -> int:
    from hf_crystal.hub import update_card

    local = Path(args.target).is_dir()
    if args.push and local:
        raise UsageError("--push is for a Hub repo id; push a folder with `hf-crystal push FOLDER REPO_ID`")
    card = update_card(
        args.target,
        args.metrics,
        dataset_id=args.dataset_id,
        push=args.push,
        source=f"metrics: {args.metrics}",
    )
    if local:
        print(f"wrote {len(card.data.eval_results)} evaluation results to {Path(args.target) / 'README.md'}")
    elif args.push:
        print(f"pushed the card of {args.target} with {len(card.data.eval_results)} evaluation results")
    else:
        print(card.content)
    return 0


def add_parsers(subparsers) -> None:
    """Add `push`, `pull` and `card` to the CLI's subparsers."""
    push = subparsers.add_parser(
        "push",
        help="upload a dataset, base model, adapter, refiner or Space folder in one commit",
        description="Upload a Hub-shaped folder (as hf-crystal writes them) to a Hub repo in one commit; "
        "prints the commit id. Checkpoints and loss logs stay local.",
    )
    push.add_argument("folder", help="dataset, base model, adapter, refiner or Space folder (e.g. space/)")
    push.add_argument("repo_id", help="USER/NAME")
    push.add_argument(
        "--repo-type", choices=["model", "dataset", "space"], help="default: from the folder's kind"
    )
    push.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.set_defaults(func=_cmd_push)

    pull = subparsers.add_parser(
        "pull",
        help="download a repo into the local Hub cache (for offline use) and print its path",
        description="Fill the local Hub cache with a repo (huggingface_hub.snapshot_download).",
    )
    pull.add_argument("repo_id", help="USER/NAME")
    pull.add_argument("--repo-type", choices=["model", "dataset", "space"], default="model")
    pull.add_argument("--revision", help="branch, tag or commit (default main)")
    pull.set_defaults(func=_cmd_pull)

    card = subparsers.add_parser(
        "card",
        help="put evaluation results (hf-crystal evaluate's metrics.json) on a model card",
        description="Write the numbers of a metrics.json into a model card's model-index and text: a local "
        "folder's README.md, or a Hub repo's card (printed, or uploaded with --push).",
    )
    card.add_argument("target", help="model, adapter or refiner folder, or a Hub model repo id")
    card.add_argument("--metrics", required=True, help="metrics.json written by hf-crystal evaluate")
    card.add_argument("--dataset-id", help="Hub id of the evaluation data, for the model-index")
    card.add_argument("--push", action="store_true", help="upload the updated card of a Hub repo")
    card.set_defaults(func=_cmd_card)
