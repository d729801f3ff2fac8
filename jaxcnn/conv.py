"""``jaxcnn.conv`` / ``jaxcnn.conv2d`` / ``jaxcnn.conv_transpose``: one distributed 1-, 2- or 3-D
(transposed) convolution, channels-last, any algorithm, any input sharding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from jaxcnn import algorithms, common_mesh
from jaxcnn.algorithms.engine import build
from jaxcnn.geometry import ConvGeometry, PaddingLike, conv_geometry, per_dim, transpose_padding
from jaxcnn.mesh import mesh_sizes
from jaxcnn.padding import crop_to, pad_to
from jaxcnn.redistribute import redistribute


def _check_array(value: object, name: str) -> None:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be an array (jax.Array or numpy), got {type(value).__name__}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, ...), got {value.dtype}")


def _check_mesh(mesh: object) -> dict[str, int]:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see jaxcnn.make_mesh), got {type(mesh).__name__}")
    sizes = mesh_sizes(mesh)
    if mesh.devices.size > len(jax.devices()):
        raise ValueError(f"mesh has {mesh.devices.size} devices but only {len(jax.devices())} are available")
    return sizes


def same_device_order(a: Mesh, b: Mesh) -> bool:
    """Whether two meshes lay out the same devices in the same flat order (every ``jaxcnn.make_mesh``
    over the same devices does), so that :func:`jaxcnn.redistribute.redistribute` can move between them."""
    return [d.id for d in a.devices.flat] == [d.id for d in b.devices.flat]


def known_layout(value: object) -> NamedSharding | None:
    """The NamedSharding ``value`` is laid out as, when it is known: a concrete ``jax.Array`` (not a
    tracer; inside ``jit`` an Auto-axes array's type carries its mesh but not its PartitionSpec)."""
    if isinstance(value, jax.core.Tracer):
        return None
    sharding = getattr(value, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def _on_mesh(value: jax.Array, sharding: NamedSharding) -> jax.Array:
    """``value`` moved to ``sharding`` (returned as is when it already has exactly that one).

    A concrete array laid out on another mesh over the same devices (another layer's) is moved
    explicitly (:func:`jaxcnn.redistribute.redistribute`, planned collectives, never XLA's "replicate,
    then re-partition"); anything else gets a sharding constraint. The algorithm's jitted shard_map
    must only ever see arguments in its own layouts: ``jit`` names the layout it picks for an uncommitted
    argument on the mesh of the first committed one, so an argument left on another layer's mesh
    (whose axes cannot tile this mesh's layout) made JAX raise ``IndivisibleError``. The constraint
    names the layout on the common mesh of the devices (:mod:`jaxcnn.common_mesh`), where every
    layer's layouts have names.
    """
    src = known_layout(value)
    if src == sharding:
        return value
    if (
        src is not None
        and src.mesh != sharding.mesh
        and same_device_order(src.mesh, sharding.mesh)
        and not src.is_equivalent_to(sharding, value.ndim)
    ):
        value = redistribute(value, src, sharding)
    return common_mesh.on_common_mesh(value, sharding.mesh, sharding.spec)


def layer_geometry(
    x: jax.Array | jax.ShapeDtypeStruct,
    kernel: jax.Array | jax.ShapeDtypeStruct,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> ConvGeometry:
    """Validated geometry of ``conv(x, kernel, ...)`` (raises as :func:`conv` does)."""
    _check_array(x, "x")
    _check_array(kernel, "kernel")
    return conv_geometry(x.shape, kernel.shape, strides, padding, dilation, feature_group_count)


def conv_layout(geom: ConvGeometry, *, mesh: Mesh, algorithm: str) -> algorithms.Layout:
    """The layout ``conv`` uses for a layer: specs of x / kernel / y, padding, panels, halo plans.

    ``layout.x_spec``, ``layout.kernel_spec`` and ``layout.y_spec`` are the ``PartitionSpec`` s of the
    (zero-padded to ``layout.padded``) global arrays inside the shard_map; create inputs with these
    shardings and ``conv`` moves nothing before it starts.
    """
    return algorithms.make_layout(algorithms.get(algorithm), geom, _check_mesh(mesh))


def conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    mesh: Mesh,
    algorithm: str,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    preferred_element_type: jnp.dtype | None = None,
    dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Distributed 1-, 2- or 3-D channels-last convolution, equal to the single-device one.

    ``conv(x, kernel, ...)`` equals ``jax.lax.conv_general_dilated(x, kernel, strides, padding,
    rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=feature_group_count,
    preferred_element_type=preferred_element_type)`` with ``dn`` = ``("NWC", "WIO", "NWC")``,
    ``("NHWC", "HWIO", "NHWC")`` or ``("NDHWC", "DHWIO", "NDHWC")`` for 1, 2 or 3 spatial dimensions.
    Works eagerly, under ``jax.jit`` and under ``jax.grad`` (w.r.t. ``x`` and ``kernel``). Inputs may
    have any sharding; they are resharded to the algorithm's layout (see the algorithm modules in
    :mod:`jaxcnn.algorithms`). The result has the algorithm's output layout, ``jaxcnn.conv_layout(geom,
    mesh=mesh, algorithm=algorithm).y_spec`` (``geom`` from :func:`layer_geometry`; when a split does not
    divide the output, the result is cropped from the zero-padded output in that layout). An input laid
    out on another mesh over the same devices (another layer's) is moved to this one (explicitly, with
    :func:`jaxcnn.redistribute.redistribute`, when it is a concrete array). The result lives on ``mesh``:
    to combine it with a result on another mesh (``y1 + y2``, which JAX rejects with
    ``IndivisibleError``), move one first with :func:`jaxcnn.nn.reshard`.

    Mesh axes: ``n`` splits the batch; the spatial dimensions split over ``w`` (1-D: the length),
    ``h, w`` (2-D) or ``d, h, w`` (3-D), each with its own halo exchange (collective-permutes; depth
    first, then height on the depth-extended block, then width, so edges and corners come along);
    ``k`` / ``c`` split output / input channels as the algorithm says (all-gathers of x over ``k`` and of
    the kernel over the row axes, reduce-scatter of the output over ``c``, all-reduce of a replicated
    kernel's gradient). A spatial axis of size > 1 that the layer lacks (``d`` for a 2-D layer, ``h``
    for a 1-D one) is a ``ValueError``.

    Args:
      x: ``(N, *spatial, C)`` activations: ``(N, W, C)``, ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
      kernel: ``(*window, C/G, K)``: ``(S, C/G, K)``, ``(R, S, C/G, K)`` or ``(T, R, S, C/G, K)``.
      mesh: a mesh from :func:`jaxcnn.make_mesh` (axes n, d, h, w, k, c).
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      strides: int or one per spatial dimension.
      padding: ``"SAME"``, ``"VALID"`` or one ``(lo, hi)`` pair per spatial dimension.
      dilation: kernel dilation, int or one per spatial dimension.
      feature_group_count: G, dividing C and K (G = C: depthwise). Which algorithm and grid run which
        G is listed in :mod:`jaxcnn.algorithms.groups`; other combinations raise ``ValueError``.
      preferred_element_type: output / accumulation dtype (e.g. float32 for bfloat16 inputs).
        Low-precision inputs always accumulate local products in float32.
      dtype: the computation dtype (default: x's and the kernel's promoted dtype). x and the kernel
        are cast to it on the devices, so halos and gathered panels travel in it (16-bit floats as
        2-byte words on every backend); pass the float32 parameters as the kernel for mixed precision
        (``docs/mixed_precision.md``). The result is ``preferred_element_type`` or ``dtype``.
      reduce_dtype: the dtype the sums travel in: the reduce-scatter of partial outputs over ``c``,
        the gradients' reduce-scatters and a replicated kernel's gradient all-reduce (default float32
        for 16-bit ``dtype``, else ``dtype``).

    Returns:
      ``(N, *spatial_out, K)``.

    Raises:
      ValueError: bad shapes or ranks, channel mismatch, bad stride/dilation/padding, unknown
        algorithm, a mesh axis of size > 1 the algorithm or the layer's rank does not use, or a group
        count the algorithm cannot split on this grid.
      TypeError: non-array or non-floating inputs, or a mesh that is not a ``jax.sharding.Mesh``.
    """
    geom = layer_geometry(x, kernel, strides, padding, dilation, feature_group_count)
    return _distributed(x, kernel, geom, mesh, algorithm, preferred_element_type, dtype, reduce_dtype)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    mesh: Mesh,
    algorithm: str,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    preferred_element_type: jnp.dtype | None = None,
    dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Distributed 2-D convolution: :func:`conv` for ``(N, H, W, C)`` x and ``(R, S, C/G, K)`` kernels.

    Equals ``jax.lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=feature_group_count,
    preferred_element_type=preferred_element_type)``; arguments, result layout and errors as
    :func:`conv` (strides / dilation: int or (σh, σw); padding: ``((lo, hi), (lo, hi))``).

    Raises:
      ValueError: x or the kernel is not rank 4, and everything :func:`conv` raises.
      TypeError: as :func:`conv`.
    """
    _check_array(x, "x")
    _check_array(kernel, "kernel")
    if x.ndim != 4:
        raise ValueError(
            f"x must have rank 4 (N, H, W, C), got shape {tuple(x.shape)}; use jaxcnn.conv for 1-D or 3-D"
        )
    if kernel.ndim != 4:
        raise ValueError(f"kernel must have rank 4 (R, S, C/G, K), got shape {tuple(kernel.shape)}")
    return conv(
        x,
        kernel,
        mesh=mesh,
        algorithm=algorithm,
        strides=strides,
        padding=padding,
        dilation=dilation,
        feature_group_count=feature_group_count,
        preferred_element_type=preferred_element_type,
        dtype=dtype,
        reduce_dtype=reduce_dtype,
    )


def _distributed(
    x: jax.Array,
    kernel: jax.Array,
    geom: ConvGeometry,
    mesh: Mesh,
    algorithm: str,
    preferred_element_type: jnp.dtype | None,
    dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """The distributed convolution of a validated ``geom`` (the body of :func:`conv`)."""
    alg = algorithms.get(algorithm)
    sizes = _check_mesh(mesh)
    compute = jnp.dtype(dtype or jnp.result_type(x.dtype, kernel.dtype))
    out_dtype = jnp.dtype(preferred_element_type or compute)
    reduce = None if reduce_dtype is None else jnp.dtype(reduce_dtype)
    layout, fn = build(alg, geom, mesh, tuple(sizes.items()), out_dtype, compute, reduce)
    if jnp.dtype(x.dtype).itemsize > compute.itemsize:  # narrowed before it moves anywhere
        x = x.astype(compute)
    x = _on_mesh(pad_to(x, layout.padded[:-1]), NamedSharding(mesh, layout.x_spec))
    kernel = _on_mesh(
        pad_to(kernel, (*geom.window, *layout.kernel_padded)),
        NamedSharding(mesh, layout.kernel_spec),
    )
    return crop_to(fn(x, kernel), geom.y_shape)


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    *,
    mesh: Mesh,
    algorithm: str,
    strides: int | Sequence[int],
    padding: PaddingLike,
    dilation: int | Sequence[int] = 1,
    transpose_kernel: bool = False,
    preferred_element_type: jnp.dtype | None = None,
    dtype: jnp.dtype | None = None,
    reduce_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """Distributed 1-, 2- or 3-D transposed convolution, equal to the single-device one.

    ``conv_transpose(x, kernel, ...)`` equals ``jax.lax.conv_transpose(x, kernel, strides, padding,
    rhs_dilation=dilation, dimension_numbers=dn, transpose_kernel=transpose_kernel,
    preferred_element_type=preferred_element_type)`` with ``dn`` channels-last as in :func:`conv`
    (``("NHWC", "HWIO", "NHWC")`` in 2-D) and ``use_consistent_padding=False``: ``"SAME"`` /
    ``"VALID"`` name the padding of the forward convolution, explicit pairs the padding of the
    stride-dilated input. It is the convolution, with window stride 1, of ``x`` dilated by ``strides``
    (``lhs_dilation``, :func:`transpose_as_conv`), run by :func:`conv`'s distributed path: the same
    layouts and collectives for every algorithm (the k / c gathers and reduce-scatters, and halo
    exchanges of undilated input rows where d, h or w is split: each block receives only the input rows
    its outputs' dilated window contains, see :func:`jaxcnn.geometry.halo_plan`).
    Works eagerly, under ``jax.jit`` and under ``jax.grad``.

    Args:
      x: ``(N, *spatial, C)`` activations, 1 to 3 spatial dimensions (global; any sharding).
      kernel: ``(*window, C, K)`` (HWIO in 2-D); with ``transpose_kernel``, ``(*window, K, C)``:
        flipped spatially and its channel axes swapped (the kernel of the forward convolution whose
        gradient this is, Keras' ``Conv2DTranspose``).
      mesh: a mesh from :func:`jaxcnn.make_mesh` (axes n, d, h, w, k, c).
      algorithm: one of ``jaxcnn.ALGORITHMS``.
      strides: the fractional stride σ, int or one per spatial dimension.
      padding: ``"SAME"``, ``"VALID"`` or one ``(lo, hi)`` pair of non-negative ints per spatial
        dimension.
      dilation: kernel dilation, int or one per spatial dimension.
      transpose_kernel: flip the kernel spatially and swap its in / out channels first.
      preferred_element_type: output / accumulation dtype.
      dtype, reduce_dtype: the computation dtype and the dtype of the sums, as in :func:`conv`.

    Returns:
      ``(N, *spatial_out, K)`` with ``Ho = (H-1)σ + lo + hi - d(R-1) + 1`` per dimension, in the
      algorithm's output layout (``conv_layout(geom, ...).y_spec`` for ``geom`` the geometry with
      input dilation σ).

    Raises:
      ValueError / TypeError: as :func:`conv` (bad shapes, channels, strides, padding, mesh,
        algorithm).
    """
    _check_array(x, "x")
    _check_array(kernel, "kernel")
    kernel, stride, padding, dil = transpose_as_conv(
        x.ndim - 2, kernel, strides, padding, dilation, transpose_kernel
    )
    geom = conv_geometry(x.shape, kernel.shape, 1, padding, dil, input_dilation=stride)
    return _distributed(x, kernel, geom, mesh, algorithm, preferred_element_type, dtype, reduce_dtype)


def transpose_as_conv(
    rank: int,
    kernel: jax.Array,
    strides: int | Sequence[int],
    padding: PaddingLike,
    dilation: int | Sequence[int] = 1,
    transpose_kernel: bool = False,
) -> tuple[jax.Array, Any, Any, Any]:
    """A rank-``rank`` transposed convolution's arguments (:func:`conv_transpose`'s) as those of the
    stride-1 convolution it is: ``(kernel, input dilation, explicit padding, kernel dilation)``, the
    ``lhs_dilation`` / ``padding`` / ``rhs_dilation`` of ``lax.conv_general_dilated`` (``"SAME"`` /
    ``"VALID"`` resolved as ``lax.conv_transpose`` does, the kernel flipped and its channel axes
    swapped with ``transpose_kernel``). Bad values pass through for :func:`conv_geometry` to name."""
    if transpose_kernel and kernel.ndim == rank + 2:
        kernel = jnp.swapaxes(jnp.flip(kernel, axis=tuple(range(rank))), -2, -1)
    if rank not in (1, 2, 3):  # conv_geometry names the bad rank
        return kernel, strides, padding, dilation
    stride = per_dim(strides, rank, "strides")
    dil = per_dim(dilation, rank, "dilation")
    if isinstance(padding, str):
        mode = padding.upper()
        padding = tuple(
            transpose_padding(size, s, d, mode)
            for size, s, d in zip(kernel.shape[:rank], stride, dil, strict=False)
        )
    return kernel, stride, padding, dil
