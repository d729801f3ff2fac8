"""Best ``plan_layer`` placement / (forward + backward lower bound) per convolution at 64 devices, 224²
(issue 21): the layers above 1.5x and every network's sum.

    python experiments/bound_ratios.py [--all]   # --all: every strided layer and stem as well
"""

import math
import sys

from jaxcnn.bounds import PASSES, lower_bound
from jaxcnn.networks import get_network
from jaxcnn.planner import plan_layer

NETWORKS = (("resnet50", 32), ("vgg16", 32), ("mobilenet_v2", 64))
DEVICES = 64
LIMIT = 1.5


def main(show_all: bool) -> int:
    over = 0
    for net, batch in NETWORKS:
        total_best = total_bound = 0.0
        for layer in get_network(net, batch):
            best = plan_layer(layer, DEVICES, math.inf).best
            bound = sum(lower_bound(layer.geom, DEVICES, pass_=pass_).bytes for pass_ in PASSES)
            total_best += best.bytes * layer.repeat
            total_bound += bound * layer.repeat
            ratio = best.bytes / bound if bound else (1.0 if best.bytes == 0 else math.inf)
            over += ratio > LIMIT
            if ratio > LIMIT or (show_all and (max(layer.geom.strides) > 1 or layer.name == "stem")):
                grid = ",".join(f"{a}={v}" for a, v in best.grid.items() if v > 1)
                place = f"{best.algorithm}@{grid}"
                figures = f"{best.bytes:>11,.0f} {bound:>11,.0f} {ratio:5.2f}"
                print(f"{net:12s} {layer.name:22s} {place:26s} {figures}")
        print(f"{net:13s} sum {total_best:,.0f} / {total_bound:,.0f} = {total_best / total_bound:.3f}")
    print(f"layers above {LIMIT}x: {over}")
    return 0


if __name__ == "__main__":
    sys.exit(main("--all" in sys.argv))
