"""Inference: the fast exact form of a trained CGNet, test-time augmentation, and the predictor
that eval, predict and notebooks share.

- :mod:`cgnet.inference.fast`: :func:`optimize` / :func:`fold_network` (BatchNorm folded, channels-last,
  compile, CUDA graphs, fused kernels: :mod:`cgnet.inference.cpu_kernels` on the CPU,
  :mod:`cgnet.inference.kernels` (Triton) on CUDA);
- :mod:`cgnet.inference.autotune`: :func:`tuned` / :class:`AutoTuned` (on CUDA, the fastest of those
  forms and the fused Triton kernels, measured per input shape);
- :mod:`cgnet.inference.tta`: whole-image, sliding-window and multi-scale + flip logits;
- :mod:`cgnet.inference.predictor`: :class:`Predictor` (uint8 batches -> trainIds) and :class:`TTA`.
"""

from cgnet.inference.autotune import AutoTuned, tuned
from cgnet.inference.fast import FastCGNet, fold_network, optimize
from cgnet.inference.predictor import TTA, Predictor
from cgnet.inference.tta import class_softmax, default_stride, predict_logits, sliding_window_logits

__all__ = [
    "TTA",
    "AutoTuned",
    "FastCGNet",
    "Predictor",
    "class_softmax",
    "default_stride",
    "fold_network",
    "optimize",
    "predict_logits",
    "sliding_window_logits",
    "tuned",
]
