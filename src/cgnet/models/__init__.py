"""The CGNet network and its weight formats; no Lightning, no Hydra."""

from cgnet.models.blocks import use_cpu_prelu, use_fused_context
from cgnet.models.cgnet import CGNet, expected_num_parameters
from cgnet.models.space_to_batch import use_space_to_batch
from cgnet.models.weights import LoadReport, WeightsMismatchError, export_weights, load_weights

__all__ = [
    "CGNet",
    "LoadReport",
    "WeightsMismatchError",
    "expected_num_parameters",
    "export_weights",
    "load_weights",
    "use_cpu_prelu",
    "use_fused_context",
    "use_space_to_batch",
]
