"""jaxcnn: communication-efficient distributed convolutions for JAX.

>>> mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
>>> y = jaxcnn.conv2d(x, kernel, mesh=mesh, algorithm="3d", strides=1, padding="SAME")
>>> y3 = jaxcnn.conv(volume, kernel3, mesh=jaxcnn.make_mesh(d=2, h=2, w=2), algorithm="spatial")
"""

from jaxcnn import cost
from jaxcnn.algorithms import ALGORITHMS
from jaxcnn.conv import conv, conv2d, conv_layout, conv_transpose, layer_geometry
from jaxcnn.cost import predict
from jaxcnn.geometry import ConvGeometry, conv_geometry
from jaxcnn.mesh import AXES, make_mesh
from jaxcnn.nn.layout import reshard
from jaxcnn.planner import NoPlanError, plan_layer, plan_network

__all__ = [
    "ALGORITHMS",
    "AXES",
    "ConvGeometry",
    "NoPlanError",
    "conv",
    "conv2d",
    "conv_geometry",
    "conv_layout",
    "conv_transpose",
    "cost",
    "layer_geometry",
    "make_mesh",
    "plan_layer",
    "plan_network",
    "predict",
    "reshard",
]
