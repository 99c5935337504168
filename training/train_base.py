"""Train a small LLaMA-architecture crystal model from scratch: `hf-crystal train base` as a script.

    python training/train_base.py --config training/configs/base_small_cpu.yaml --dataset DATA --output-dir OUT
    python training/train_base.py ... --resume          # continue after a kill

Options: `python training/train_base.py --help`.
"""

import sys

from hf_crystal.commands import main

if __name__ == "__main__":
    sys.exit(main(["train", "base", *sys.argv[1:]]))
