"""CGNet (Wu et al., IEEE TIP 2020) with PyTorch Lightning + Hydra.

Importing cgnet flushes subnormal floats to zero (:func:`cgnet.runtime.flush_denormals`): trained CGNet
weights and Adam's moments hold many, and the flag only reaches torch's CPU worker threads if it is set
before the pool starts, which any later import may do; so it is set here, first.
"""

from cgnet.runtime import flush_denormals

flush_denormals()
