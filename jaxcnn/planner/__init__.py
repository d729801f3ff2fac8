"""The planner: which algorithm and grid each layer should use (see :mod:`.plan`)."""

from jaxcnn.planner.plan import LayerPlan, NetworkPlan, NetworkStep, NoPlanError, plan_layer, plan_network
from jaxcnn.transition import layout_change_bytes

__all__ = [
    "LayerPlan",
    "NetworkPlan",
    "NetworkStep",
    "NoPlanError",
    "layout_change_bytes",
    "plan_layer",
    "plan_network",
]
