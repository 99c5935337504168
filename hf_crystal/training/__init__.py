"""Training of crystal-text language models (from-scratch base, LoRA adapters)."""
