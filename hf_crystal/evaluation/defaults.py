"""Relaxation defaults, in a module that imports nothing (the command line reads them at start-up).

CHGNet's ``StructOptimizer.relax`` defaults (Deng et al. 2023): fmax in eV/Å, FIRE, 500 steps.
``hf_crystal.evaluation.relax`` re-exports them.
"""

DEFAULT_FMAX = 0.1
DEFAULT_MAX_STEPS = 500
DEFAULT_OPTIMIZER = "FIRE"
DEFAULT_BATCH_SIZE = 16
# ASE optimizers that only evaluate at the current positions inside step() (no line search), so their
# force calls can be served from the batched prediction.
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS", "MDMin")
