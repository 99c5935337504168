"""`hf-crystal app`: the Gradio app (`hf_crystal.app`) in a browser, on this machine.

Without `--model`, the embedded default model with its refiner, offline. Gradio's analytics are off; the page
loads nothing from other hosts. Needs the `app` extra (`pip install 'hf-crystal[app]'`).
"""

from __future__ import annotations

import argparse

from hf_crystal.commands.errors import UsageError
from hf_crystal.embedded import DEFAULT_MODEL

__all__ = ["add_parser"]

DEFAULT_PORT = 7860


def _cmd_app(args: argparse.Namespace) -> int:
    import os

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it checks at import too
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the app needs Gradio: pip install 'hf-crystal[app]'") from None
    import torch

    from hf_crystal.app import DEFAULT_MAX_CRYSTALS, MAX_CRYSTALS_LIMIT, build_app

    if args.no_refiner and args.refiner:
        raise UsageError("give --refiner or --no-refiner, not both")
    if args.max_sites < 1:
        raise UsageError(f"--max-sites must be >= 1, got {args.max_sites}")
    max_crystals = DEFAULT_MAX_CRYSTALS if args.max_crystals is None else args.max_crystals
    if not 1 <= max_crystals <= MAX_CRYSTALS_LIMIT:
        raise UsageError(f"--max-crystals must be 1-{MAX_CRYSTALS_LIMIT}, got {max_crystals}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    refiner = None if args.no_refiner else (args.refiner or "auto")
    demo = build_app(args.model, refiner=refiner, max_crystals=max_crystals, max_sites=args.max_sites)
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False)
    return 0


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"a port number 1-65535, got {value!r}")
    return int(value)


def add_parser(subparsers) -> None:
    """Add `app` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "app",
        help="serve the interactive Gradio app (generate, infill, stability) in a browser",
        description="Serve the Gradio app: generate crystals for conditions and see them in 3D, rank infill "
        "candidates, relax with CHGNet for E_hull. Open the printed URL in a browser; Ctrl+C stops it.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"local folder or Hub id of a model or LoRA adapter (default: the embedded {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--refiner", help="FlowLLM refiner, folder or Hub id (default: the one the model comes with)"
    )
    p.add_argument("--no-refiner", action="store_true", help="no refiner, not even the model's own")
    p.add_argument("--max-crystals", type=int, help="most crystals per request (default 8, at most 12)")
    p.add_argument(
        "--max-sites", type=int, default=20, help="most sites per generated crystal (default 20, MP-20's)"
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=_cmd_app)
