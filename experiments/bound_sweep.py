"""No prediction below the lower bound, over the strided layers of the networks and random strided,
dilated and padded layers (issue 21): every algorithm x even grid (and the replicated placements
``plan_layer`` admits, :mod:`jaxcnn.planner.replicas`), each pass on its own (the forward
bound with a replicated kernel where the algorithm starts with one), and forward + backward against the
sum of the plain bounds (the ratio ``bound_ratios.py`` reports).

    python experiments/bound_sweep.py [SEED]
"""

import math
import random
import sys

# the three networks at their batches (this script's directory is on sys.path)
from bound_ratios import NETWORKS

from jaxcnn import ALGORITHMS, algorithms
from jaxcnn.bounds import lower_bound
from jaxcnn.cost import predict
from jaxcnn.geometry import ConvGeometry, conv_geometry
from jaxcnn.networks import get_network
from jaxcnn.planner.grids import placements
from jaxcnn.planner.plan import MAX_REPLICAS
from jaxcnn.planner.replicas import planned_replicas


def cases(seed: int, count: int = 400) -> list[tuple[ConvGeometry, int]]:
    """The networks' strided layers and stems at 64 devices, then random small layers at 4-16."""
    out = [
        (layer.geom, 64)
        for net, batch in NETWORKS
        for layer in get_network(net, batch)
        if (layer.geom.groups == 1 and max(layer.geom.strides) > 1) or layer.name == "stem"
    ]
    rng = random.Random(seed)
    while len(out) < count:
        r, s, d, h = (
            rng.choice([1, 2, 3, 5, 7]),
            rng.choice([1, 2, 3, 4]),
            rng.choice([1, 1, 2]),
            rng.choice([5, 7, 8, 12, 16]),
        )
        pad = rng.choice(["SAME", "VALID", ((1, 2), (0, 1)), ((3, 3), (3, 3))])
        n, c, k = rng.choice([1, 2, 4, 8]), rng.choice([1, 3, 4, 8, 16]), rng.choice([4, 8, 16])
        try:
            x_shape, kernel = (n, h, h + rng.choice([0, 3]), c), (r, rng.choice([r, 1]), c, k)
            geom = conv_geometry(x_shape, kernel, (s, rng.choice([1, s])), pad, d)
        except ValueError:  # a window larger than the padded input
            continue
        out.append((geom, rng.choice([4, 8, 16])))
    return out


def main(seed: int) -> int:
    checked = bad = 0
    for geom, p in cases(seed):
        fb, bb = (lower_bound(geom, p, pass_=pass_).bytes for pass_ in ("forward", "backward"))
        for alg, grid in placements(geom, p, ALGORITHMS, planned_replicas(geom, p, MAX_REPLICAS)):
            try:
                cost = predict(geom, alg, grid)
            except ValueError:
                continue
            if not cost.layout.is_even(cost.geom):
                continue
            rows = math.prod(grid[a] for a in ("n", "d", "h", "w"))
            rep = ("kernel",) if not algorithms.get(alg).kernel_over_rows and rows > 1 else ()
            fwd = lower_bound(geom, p, replicated=rep).bytes
            checked += 1
            below = (
                cost.forward.max_bytes < fwd * (1 - 1e-9)
                or cost.backward.max_bytes < bb * (1 - 1e-9)
                or cost.forward.max_bytes + cost.backward.max_bytes < (fb + bb) * (1 - 1e-9)
            )
            if below:
                bad += 1
                print("BELOW", geom, alg, grid, cost.forward.max_bytes, fwd, cost.backward.max_bytes, bb)
    print("checked", checked, "below the bound", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
