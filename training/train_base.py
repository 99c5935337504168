"""Train a small LLaMA-architecture crystal model from scratch: `hf-crystal train base` as a script.

    python training/train_base.py --config training/configs/base_small_cpu.yaml --dataset DATA --output_dir OUT
    python training/train_base.py ... --resume          # continue after a kill

Options are read by `trl.TrlParser` into (BaseScriptArguments, SFTConfig, ModelConfig): every
SFTConfig flag works (e.g. --learning_rate, --bf16, --eval_strategy); `python training/train_base.py --help`.
"""

import sys

from hf_crystal.training.base import main
from hf_crystal.training.common import TrainingConfigError

if __name__ == "__main__":
    try:
        print(f"saved to {main()}")
    except TrainingConfigError as err:
        sys.exit(f"{sys.argv[0]}: error: {err}")
