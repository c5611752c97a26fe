"""The CGNet network and its weight formats; no Lightning, no Hydra."""

from cgnet.models.cgnet import CGNet, expected_num_parameters

__all__ = ["CGNet", "expected_num_parameters"]
