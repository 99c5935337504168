"""Training loss of runs of `hf-crystal train` (their `train_log.json`): window means as a table, curves as a PNG.

    python benchmarks/loss_curves.py stage1=S1 stage2=S2 stage3=S3 --stages --window 300 --out loss.png

A run is ``[LABEL=]PATH``, PATH a ``train_log.json`` or the output folder that holds it. ``--stages`` puts each run
after the previous one on the step axis (the stages of one model, each continued from the last); without it the
runs are overlaid (e.g. two recipes at one budget). Each window's mean is over the logged losses whose step falls
in it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_losses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of the training-loss entries of a ``train_log.json`` (or of the one in folder ``path``)."""
    path = path / "train_log.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no train_log.json there (give a run's output folder or its train_log.json)"
        )
    rows = [row for row in json.loads(path.read_text()) if "loss" in row and "step" in row]
    if not rows:
        raise ValueError(f"{path}: no logged training loss (was the run logged with --logging_steps?)")
    return np.array([row["step"] for row in rows]), np.array([float(row["loss"]) for row in rows])


def window_means(steps: np.ndarray, losses: np.ndarray, window: int) -> list[tuple[int, int, float]]:
    """(first step, last step, mean loss) of each ``window``-step window holding a logged loss."""
    out = []
    for start in range(0, int(steps.max()), window):
        inside = (steps > start) & (steps <= start + window)
        if inside.any():
            out.append((start + 1, start + window, float(losses[inside].mean())))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="[LABEL=]PATH: a train_log.json or the run folder holding it")
    parser.add_argument("--stages", action="store_true", help="one run after another on the step axis")
    parser.add_argument("--window", type=int, default=100, help="steps per window of the table (default 100)")
    parser.add_argument("--out", type=Path, help="write the curves to this PNG")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be at least 1")
    curves = []
    for spec in args.runs:
        label, _, path = spec.rpartition("=")
        try:
            curves.append((label or path, *read_losses(Path(path))))
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
    # With --stages each run starts where the previous one ended.
    ends = [int(steps.max()) if args.stages else 0 for _, steps, _ in curves]
    offsets = np.concatenate([[0], np.cumsum(ends)[:-1]]).astype(int)
    print("| run | steps | mean loss |\n|---|---|---|")
    for (label, steps, losses), offset in zip(curves, offsets, strict=True):
        for first, last, mean in window_means(steps, losses, args.window):
            print(f"| {label} | {first + offset:,}-{last + offset:,} | {mean:.3f} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for (label, steps, losses), offset in zip(curves, offsets, strict=True):
            ax.plot(steps + offset, losses, lw=1, label=label)
        ax.set_xlabel("optimizer step" + (" (stages one after another)" if args.stages else ""))
        ax.set_ylabel("training loss (logged)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
