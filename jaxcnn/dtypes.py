"""The dtypes of a distributed step, as the algorithms run them and the cost model prices them.

The policy (``docs/mixed_precision.md``): parameters and optimizer state in float32; activations and
the local convolutions' operands in the *compute* dtype, accumulated in float32; everything that only
*moves* (halos, gathered panels, layout changes) in the compute dtype; everything that is *summed*
across devices (the reduce-scatter of partial outputs, the gradients' reduce-scatters and all-reduces)
in the *reduce* dtype, float32 by default; BatchNorm statistics, pooled sums and the loss in float32.

XLA:CPU has no 16-bit float collectives: it converts a bfloat16 reduction to float32 around the
collective, which then moves 4-byte words. The algorithms move 16-bit data as bit patterns (so a
move costs 2 bytes on every backend, :func:`as_bits`); a 16-bit *reduction* on the CPU is priced in
float32 (:meth:`Dtypes.on`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, for np.dtype("bfloat16"))
import numpy as np
from jax import lax

#: Platforms whose compiler computes 16-bit floats in float32: it widens their reductions to float32
#: on the wire, and holds a 16-bit convolution's operands and temporaries in float32.
WIDENING_PLATFORMS = ("cpu",)


def reduction_dtype(dtype, reduce_dtype=None) -> np.dtype:
    """The dtype sums of ``dtype`` travel in: ``reduce_dtype`` if given, else float32 for floats
    narrower than 32 bits and ``dtype`` itself otherwise."""
    if reduce_dtype is not None:
        return np.dtype(reduce_dtype)
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


@dataclasses.dataclass(frozen=True)
class Dtypes:
    """A step's compute and reduce dtypes (names, e.g. ``"bfloat16"``; hashable).

    Attributes:
      compute: activations, the local convolutions' operands and everything that moves.
      reduce: what the sums travel in; None: :func:`reduction_dtype`'s default.
    """

    compute: str = "float32"
    reduce: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute", np.dtype(self.compute).name)
        if self.reduce is not None:
            object.__setattr__(self, "reduce", np.dtype(self.reduce).name)

    @classmethod
    def of(cls, value) -> Dtypes:
        """``value`` as Dtypes: a Dtypes, or a dtype (name) taken as the compute dtype."""
        return value if isinstance(value, Dtypes) else cls(np.dtype(value).name)

    @property
    def reduce_dtype(self) -> str:
        """The reduce dtype, resolved."""
        return reduction_dtype(self.compute, self.reduce).name

    @property
    def itemsize(self) -> int:
        """Bytes per moved element (the compute dtype's)."""
        return np.dtype(self.compute).itemsize

    @property
    def reduce_itemsize(self) -> int:
        """Bytes per summed element on the wire."""
        return np.dtype(self.reduce_dtype).itemsize

    def on(self, platform: str) -> Dtypes:
        """These dtypes as ``platform``'s compiled collectives carry them: on the CPU a 16-bit
        reduction travels as float32."""
        if platform in WIDENING_PLATFORMS and self.reduce_itemsize < 4:
            return dataclasses.replace(self, reduce="float32")
        return self


def as_bits(x: jax.Array) -> jax.Array:
    """A 16-bit float array as ``uint16`` bit patterns (any other array unchanged): what a collective
    that only moves it should carry (XLA:CPU widens 16-bit float collectives to float32)."""
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
        return lax.bitcast_convert_type(x, jnp.uint16)
    return x


def from_bits(bits: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The inverse of :func:`as_bits` for an array of ``dtype``."""
    return lax.bitcast_convert_type(bits, dtype) if bits.dtype != dtype else bits
