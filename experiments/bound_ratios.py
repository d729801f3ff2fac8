"""WIP (issue 21): best plan_layer placement / (forward + backward lower bound) per layer at 64 devices."""

import math

from jaxcnn.bounds import lower_bound
from jaxcnn.networks import get_network
from jaxcnn.planner import plan_layer

for net, batch in (("resnet50", 32), ("vgg16", 32), ("mobilenet_v2", 64)):
    layers = get_network(net, batch)
    tb = tp = 0
    for l in layers:
        p = plan_layer(l, 64, math.inf)
        b = p.best
        first = l is layers[0]
        bound = (
            lower_bound(l.geom, 64, pass_="forward").bytes + lower_bound(l.geom, 64, pass_="backward").bytes
        )
        tb += bound * l.repeat
        tp += b.bytes * l.repeat
        r = b.bytes / bound if bound else float("inf")
        if r > 1.5:
            print(
                net,
                l.name,
                l.geom.x_shape,
                l.geom.kernel_shape,
                l.geom.strides,
                b.algorithm,
                b.grid,
                f"{b.bytes:,.0f} {bound:,.0f} {r:.2f}",
            )
    print(net, "sum", tp / tb)
