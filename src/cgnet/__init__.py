"""CGNet (Wu et al., IEEE TIP 2020) with PyTorch Lightning + Hydra.

Importing cgnet flushes subnormal floats to zero. Trained CGNet weights and Adam's moments hold many
subnormals, which make CPU kernels 10-40x slower, and the flag only reaches torch's CPU worker threads
if it is set before the pool starts, which any later import may do; so it is set here, first.
"""

import torch

torch.set_flush_denormal(True)
