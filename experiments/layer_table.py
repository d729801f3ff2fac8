"""Per-algorithm communication and memory of one layer, metered from the compiled HLO (compile only).

Usage:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/layer_table.py \
      [--shape 32,56,56,64] [--kernel 3,3,64,64] [--stride 1]

For each algorithm on a representative 8-device grid and on the planner's best grid for it, prints
the collectives found in the HLO (kind × executions), bytes received per device (max over devices)
forward and backward, the cost model's prediction, and compiled temp memory (forward / backward).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax

import jaxcnn
from jaxcnn.cost import predict
from jaxcnn.measure import measure_conv
from jaxcnn.planner import plan_layer

GRIDS = {
    "data": dict(n=8),
    "spatial": dict(n=2, h=2, w=2),
    "filter": dict(k=8),
    "channel": dict(c=8),
    "2d": dict(n=4, k=2),
    "2.5d": dict(n=2, k=2, c=2),
    "3d": dict(n=2, k=2, c=2),
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _collectives(report) -> str:
    parts = [f"{k}×{s.count}" for k, s in report.by_kind.items() if s.count]
    return ", ".join(parts) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_ints, default=(32, 56, 56, 64))
    parser.add_argument("--kernel", type=_ints, default=(3, 3, 64, 64))
    parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    geom = jaxcnn.conv_geometry(args.shape, args.kernel, args.stride)
    devices = len(jax.devices())
    print(f"layer x{args.shape} kernel{args.kernel} stride {args.stride}, {devices} devices, fp32")
    header = f"{'algorithm':<9}{'grid':<14}{'fwd B/dev':>12}{'bwd B/dev':>12}{'model ok':>9}"
    print(header + f"{'temp fwd MiB':>13}{'temp bwd MiB':>13}  collectives fwd | bwd")
    for alg in jaxcnn.ALGORITHMS:
        grids = [GRIDS[alg]] if devices == 8 else []
        try:
            best = plan_layer(geom, devices, allowed=(alg,), max_replicas=1).best.grid
            grids.append({a: v for a, v in best.items() if v > 1})
        except ValueError:
            pass
        for key in dict.fromkeys(tuple((a, g.get(a, 1)) for a in jaxcnn.AXES) for g in grids):
            grid = {a: v for a, v in key if v > 1}
            fwd, bwd = measure_conv(geom, mesh=jaxcnn.make_mesh(**grid), algorithm=alg)
            cost = predict(geom, alg, grid)
            ok = fwd.max_bytes == cost.forward.max_bytes and bwd.max_bytes == cost.backward.max_bytes
            name = " ".join(f"{a}{v}" for a, v in grid.items())
            print(
                f"{alg:<9}{name:<14}{fwd.max_bytes:>12,.0f}{bwd.max_bytes:>12,.0f}{'yes' if ok else 'NO':>9}"
                f"{fwd.memory.temp_bytes / 2**20:>13.2f}{bwd.memory.temp_bytes / 2**20:>13.2f}"
                f"  {_collectives(fwd)} | {_collectives(bwd)}"
            )


if __name__ == "__main__":
    main()
