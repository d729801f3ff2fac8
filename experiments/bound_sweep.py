"""WIP (issue 21): no prediction below the bound, over strided network layers and random strided layers.

python experiments/bound_sweep.py SEED
"""

import random
import sys

from jaxcnn import ALGORITHMS
from jaxcnn.bounds import lower_bound
from jaxcnn.cost import predict
from jaxcnn.geometry import conv_geometry
from jaxcnn.networks import get_network
from jaxcnn.planner.grids import grids_for

cases = []
for net, b in (("resnet50", 32), ("vgg16", 32), ("mobilenet_v2", 64)):
    cases += [
        (l.geom, 64)
        for l in get_network(net, b)
        if (l.geom.groups == 1 and max(l.geom.strides) > 1) or l.name == "stem"
    ]
rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
while len(cases) < 400:
    r = rng.choice([1, 2, 3, 5, 7])
    s = rng.choice([1, 2, 3, 4])
    d = rng.choice([1, 1, 2])
    h = rng.choice([5, 7, 8, 12, 16])
    pad = rng.choice(["SAME", "VALID", ((1, 2), (0, 1)), ((3, 3), (3, 3))])
    n, c, k = rng.choice([1, 2, 4, 8]), rng.choice([1, 3, 4, 8, 16]), rng.choice([4, 8, 16])
    try:
        g = conv_geometry(
            (n, h, h + rng.choice([0, 3]), c), (r, rng.choice([r, 1]), c, k), (s, rng.choice([1, s])), pad, d
        )
    except Exception:
        continue
    cases.append((g, rng.choice([4, 8, 16])))
bad = checked = 0
for g, p in cases:
    for alg in ALGORITHMS:
        for grid in grids_for(alg, g, p):
            try:
                c = predict(g, alg, grid)
            except ValueError:
                continue
            if not c.layout.is_even(c.geom):
                continue
            rep = ("kernel",) if grid["k"] * grid["c"] == 1 else ()
            fb = lower_bound(g, p, replicated=rep).bytes
            bb = lower_bound(g, p, pass_="backward").bytes
            checked += 1
            if c.backward.max_bytes < bb * (1 - 1e-9) or c.forward.max_bytes + c.backward.max_bytes < (
                fb + bb
            ) * (1 - 1e-9):
                bad += 1
                if bad < 10:
                    print(
                        "VIOLATION",
                        g.x_shape,
                        g.kernel_shape,
                        g.strides,
                        g.padding,
                        g.dilation,
                        alg,
                        grid,
                        c.forward.max_bytes,
                        fb,
                        c.backward.max_bytes,
                        bb,
                    )
print("checked", checked, "violations", bad)
