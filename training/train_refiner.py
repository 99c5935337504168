"""Train the FlowLLM refiner: `hf-crystal train refiner` as a script.

    python training/train_refiner.py --dataset DATA --llm LLM_OR_ADAPTER --output_dir OUT     # FlowLLM
    python training/train_refiner.py --dataset DATA --base uniform --output_dir OUT          # FlowMM's base
    python training/train_refiner.py ... --resume                                            # after a kill

Options: `hf_crystal.training.refiner.RefinerArguments` (`--config FILE.yaml` takes the same keys);
`python training/train_refiner.py --help`.
"""

import sys

from hf_crystal.training.common import TrainingConfigError
from hf_crystal.training.refiner import main

if __name__ == "__main__":
    try:
        print(f"saved to {main()}")
    except TrainingConfigError as err:
        sys.exit(f"{sys.argv[0]}: error: {err}")
