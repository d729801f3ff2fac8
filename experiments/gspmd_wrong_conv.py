"""Reproducer: GSPMD computes a wrong convolution for one input sharding (jax 0.10.2, CPU).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/gspmd_wrong_conv.py

On a 5-axis mesh (n=2, h=1, w=1, k=2, c=2) with x sharded ``P(None, 'n', 'k')`` (H over n, W over k,
replicated over c) and the kernel ``P(None, None, 'n')`` (input channels over n), plain
``lax.conv_general_dilated`` (eager or jitted) differs from the unsharded result; ``jaxcnn.conv2d``
with the same inputs is exact (``tests/algorithms/test_exact.py::test_any_input_sharding_and_jit_reuse``).
Prints the max |error| of both and JAX's version.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn


def main() -> None:
    mesh = jaxcnn.make_mesh(n=2, k=2, c=2)
    rng = np.random.default_rng(11)
    x0 = jnp.asarray(rng.standard_normal((4, 8, 8, 8)), jnp.float32)
    k0 = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)

    def conv(a, b):
        return lax.conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )

    ref = conv(x0, k0)
    x = jax.device_put(x0, NamedSharding(mesh, P(None, "n", "k")))
    k = jax.device_put(k0, NamedSharding(mesh, P(None, None, "n")))
    gspmd = float(jnp.max(jnp.abs(jax.jit(conv)(x, k) - ref)))
    ours = float(jnp.max(jnp.abs(jaxcnn.conv2d(x, k, mesh=mesh, algorithm="3d") - ref)))
    scale = float(jnp.max(jnp.abs(ref)))
    print(f"jax {jax.__version__}: max |error| GSPMD {gspmd:.3g}, jaxcnn 3d {ours:.3g} (max |y| {scale:.3g})")


if __name__ == "__main__":
    main()
