"""Run under `accelerate launch`: train_lora or train_base, then record what this rank saw and its weights.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_probe.py RECORD_DIR {lora|base} [TRAINING OPTIONS]

Writes RECORD_DIR/rank-R.json: a hash per training example of the rank's (sharded) dataloader, and a
digest of the rank's final trainable weights.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from hf_crystal.training import base, lora


def main() -> None:
    record, kind, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    module = lora if kind == "lora" else base
    trainer = getattr(module, f"train_{kind}")(*module.parse_args(argv))
    examples = [
        hashlib.sha256(ids[mask.bool()].numpy().tobytes()).hexdigest()
        for batch in trainer.get_train_dataloader()
        for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu(), strict=True)
    ]
    weights = hashlib.sha256()
    for name, param in sorted(trainer.model.named_parameters()):
        if param.requires_grad:
            weights.update(name.encode() + param.detach().cpu().to(torch.float32).numpy().tobytes())
    rank = trainer.accelerator.process_index
    record.mkdir(parents=True, exist_ok=True)
    (record / f"rank-{rank}.json").write_text(
        json.dumps({"examples": examples, "weights": weights.hexdigest()})
    )


if __name__ == "__main__":
    main()
