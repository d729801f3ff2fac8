"""The planner: which algorithm and grid each layer should use (see :mod:`.plan`)."""

from jaxcnn.planner.plan import LayerPlan, NetworkPlan, NetworkStep, NoPlanError, plan_layer, plan_network
from jaxcnn.planner.transition import transition_bytes

__all__ = [
    "LayerPlan",
    "NetworkPlan",
    "NetworkStep",
    "NoPlanError",
    "plan_layer",
    "plan_network",
    "transition_bytes",
]
