"""Fine-tune a LoRA adapter on any causal LM: `hf-crystal train lora` as a script.

    python training/train_lora.py --config training/configs/lora_llama2_7b.yaml --dataset DATA --output_dir OUT
    accelerate launch training/train_lora.py --config ...     # multi-GPU, DeepSpeed or FSDP
    python training/train_lora.py ... --resume                 # continue after a kill

Options are read by `trl.TrlParser` into (LoraScriptArguments, SFTConfig, ModelConfig): every
SFTConfig and ModelConfig flag works (e.g. --learning_rate, --bf16, --lora_r, --lora_target_modules);
the LoRA config is `trl.get_peft_config`. `python training/train_lora.py --help`.
"""

import sys

from hf_crystal.training.common import TrainingConfigError
from hf_crystal.training.lora import main

if __name__ == "__main__":
    try:
        print(f"saved to {main()}")
    except TrainingConfigError as err:
        sys.exit(f"{sys.argv[0]}: error: {err}")
