"""Fine-tune a LoRA adapter on any causal LM: `hf-crystal train lora` as a script.

    python training/train_lora.py --config training/configs/lora_llama2_7b.yaml --dataset DATA --output-dir OUT
    accelerate launch training/train_lora.py --config ...     # multi-GPU, DeepSpeed or FSDP
    python training/train_lora.py ... --resume                 # continue after a kill

Options: `python training/train_lora.py --help`.
"""

import sys

from hf_crystal.commands import main

if __name__ == "__main__":
    sys.exit(main(["train", "lora", *sys.argv[1:]]))
