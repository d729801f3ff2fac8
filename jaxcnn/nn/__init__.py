"""Flax layers on distributed activations: convolution, batch norm, pooling, layout chaining.

Every layer takes the mesh its activation lives on and the activation's ``PartitionSpec``
(for a convolution: its algorithm, which determines both):

>>> conv = jaxcnn.nn.Conv(3, 16, (3, 3), mesh=mesh, algorithm="3d", rngs=nnx.Rngs(0))
>>> bn = jaxcnn.nn.BatchNorm(16, mesh=mesh, spec=conv.output_spec, rngs=nnx.Rngs(0))
>>> y = jaxcnn.nn.max_pool(nnx.relu(bn(conv(x))), (2, 2), (2, 2), mesh=mesh, spec=conv.output_spec)

``jaxcnn.nn.ConvTranspose`` is the same drop-in for ``nnx.ConvTranspose`` (:func:`jaxcnn.conv_transpose`).

Linen users: :class:`jaxcnn.nn.linen.Conv`, or ``conv_general_dilated=jaxcnn.nn.conv_general_dilated(...)``.
"""

from jaxcnn.nn import linen
from jaxcnn.nn.batch_norm import BatchNorm, batch_stats
from jaxcnn.nn.conv import Conv, DistributedConvGeneralDilated, conv_general_dilated
from jaxcnn.nn.conv_transpose import ConvTranspose
from jaxcnn.nn.layout import Traffic, reshard, transition_bytes, transition_traffic
from jaxcnn.nn.params import create_sharded, variable_shardings
from jaxcnn.nn.placement import Placement, parse_placement
from jaxcnn.nn.pooling import avg_pool, global_avg_pool, max_pool

__all__ = [
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "DistributedConvGeneralDilated",
    "Placement",
    "Traffic",
    "avg_pool",
    "batch_stats",
    "conv_general_dilated",
    "create_sharded",
    "global_avg_pool",
    "linen",
    "max_pool",
    "parse_placement",
    "reshard",
    "transition_bytes",
    "transition_traffic",
    "variable_shardings",
]
