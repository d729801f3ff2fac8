"""The grid × convolution-case table every algorithm is checked on."""

from __future__ import annotations

# (n, h, w, k, c) grids, by algorithm. Includes the grids (2,2,2,1,1), (1,1,1,2,4),
# (2,1,1,2,2), (1,2,2,2,1) and 2.5d at depth 2, plus deep spatial splits whose halos need
# several hops.
GRIDS: dict[str, list[tuple[int, int, int, int, int]]] = {
    "data": [(8, 1, 1, 1, 1), (2, 1, 1, 1, 1)],
    "spatial": [(2, 2, 2, 1, 1), (1, 4, 2, 1, 1), (1, 1, 8, 1, 1)],
    "filter": [(1, 1, 1, 8, 1), (1, 1, 1, 2, 1), (2, 1, 2, 2, 1)],
    "channel": [(1, 1, 1, 1, 8), (1, 1, 1, 1, 2), (2, 2, 1, 1, 2)],
    "2d": [(2, 2, 2, 1, 1), (1, 2, 2, 2, 1), (2, 1, 1, 4, 1)],
    "2.5d": [(1, 1, 1, 2, 4), (2, 1, 1, 2, 2), (1, 2, 1, 2, 2), (1, 2, 2, 1, 2)],
    "3d": [(2, 2, 2, 1, 1), (1, 1, 1, 2, 4), (2, 1, 1, 2, 2), (1, 2, 2, 2, 1)],
    # replicated over the axis they do not split (c, or k for channel): the layer on a sub-grid, copied
    # (jaxcnn.algorithms.replicas). `make test-fast` runs filter+replicas only: the others add no
    # mechanism of their own.
    "filter+replicas": [(1, 1, 1, 4, 2), (2, 2, 1, 1, 2)],
    "data+replicas": [(2, 1, 1, 1, 4)],
    "spatial+replicas": [(1, 2, 2, 1, 2)],
    "channel+replicas": [(1, 1, 1, 2, 4)],
    "2d+replicas": [(2, 1, 1, 2, 2)],
}


def fast_algorithm(algorithm: str) -> bool:
    """Whether ``make test-fast`` runs the algorithm's first cases (every plain one, filter+replicas)."""
    return not algorithm.endswith("+replicas") or algorithm == "filter+replicas"


# (strides, padding, dilation, (R, S)): every stride 1..3, dilation 1..3, kernels 1..7 incl. even
# and non-square, SAME / VALID / explicit asymmetric padding.
CASES: list[tuple] = [
    (1, "SAME", 1, (3, 3)),
    (2, "SAME", 1, (3, 3)),
    (1, "VALID", 2, (3, 3)),
    (3, ((2, 1), (0, 3)), 1, (4, 2)),
    (2, "SAME", 3, (2, 2)),
    ((1, 2), "SAME", (2, 1), (5, 3)),
    (2, "VALID", 1, (1, 1)),
    (1, "SAME", 2, (7, 7)),
    (3, ((0, 4), (3, 0)), (1, 3), (6, 1)),
]

X_SHAPE = (4, 16, 16, 8)  # N, H, W, C
K_OUT = 8


def mesh_kwargs(grid: tuple[int, int, int, int, int]) -> dict[str, int]:
    return dict(zip(("n", "h", "w", "k", "c"), grid, strict=True))


def case_id(case: tuple) -> str:
    s, p, d, rs = case
    pad = p if isinstance(p, str) else "x".join(f"{a}-{b}" for a, b in p)
    return f"s{s}-{pad}-d{d}-k{rs[0]}x{rs[1]}".replace(" ", "").replace(",", "_")
