"""Convolution geometry: argument normalisation, output sizes and halo plans for split dimensions.

Pure Python (no JAX arrays): the algorithms, the cost model and the planner all read the same numbers.

A layer has 1, 2 or 3 spatial dimensions (channels-last ``(N, W, C)``, ``(N, H, W, C)``,
``(N, D, H, W, C)``; kernels ``(*window, C/G, K)``): :class:`ConvGeometry` holds one
:class:`DimGeometry` per spatial dimension (``dims``) and the mesh axes that split them
(``spatial_axes``: ``("w",)``, ``("h", "w")``, ``("d", "h", "w")``). Each split dimension has its own
halo plan; everything below is per dimension.

A spatial dimension of input length ``H``, kernel ``R``, stride ``σ``, dilation ``d`` and padding
``(lo, hi)`` has the output length ``Ho = (H + lo + hi - d(R-1) - 1) // σ + 1``; output position ``p``
reads input rows ``σp - lo + d·r`` for ``r < R``.

Splitting that dimension ``P`` ways (``Bo = ⌈Ho/P⌉`` outputs and ``Bi = ⌈H/P⌉`` inputs per block,
the global arrays zero-padded to ``P·Bo`` / ``P·Bi``), block ``b`` needs the input rows
``[σ·b·Bo - lo, σ·b·Bo - lo + σ(Bo-1) + d(R-1) + 1)`` but owns ``[b·Bi, (b+1)·Bi)``. The halo plan
records the widest reach to the left and right over all blocks; every device receives exactly that
many rows (zeros where they fall outside the image, which is exactly the zero padding), then cuts its
own window at offset ``left - lo + b·(σ·Bo - Bi)``. Nothing here is special-cased by stride, dilation,
kernel parity or padding.

An input dilation ``σi`` (``lhs_dilation``, the transposed convolution) reads the input as if
``σi - 1`` zero rows sat between its rows: the formulas above then hold for the dilated input of
length ``(H-1)σi + 1``, and :func:`halo_plan` maps each block's dilated window back to the undilated
rows it contains (the only rows devices exchange).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

PaddingLike = str | Sequence[tuple[int, int]]


#: Mesh axes the spatial dimensions of a 1-, 2- or 3-D convolution are split over (in array order).
SPATIAL_AXES: dict[int, tuple[str, ...]] = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}

#: Channels-last ``lax.conv_general_dilated`` dimension numbers by spatial rank.
DIMENSION_NUMBERS: dict[int, tuple[str, str, str]] = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def per_dim(value: int | Sequence[int], rank: int, name: str) -> tuple[int, ...]:
    """``value`` as ``rank`` positive ints (an int is repeated).

    Raises:
      ValueError: not an int or a sequence of ``rank`` ints, or an entry below 1.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * rank
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == rank:
        out = tuple(value)
    else:
        raise ValueError(
            f"{name} must be an int or a sequence of {rank} ints (one per spatial dimension), got {value!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out):
        raise ValueError(f"{name} must be positive ints, got {value!r}")
    return out


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as two positive ints (:func:`per_dim` with rank 2)."""
    return per_dim(value, 2, name)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class DimGeometry:
    """One spatial dimension of a convolution.

    Attributes:
      size: input length (H or W).
      kernel: kernel length (R or S).
      stride: stride σ.
      dilation: kernel (rhs) dilation d.
      pad: explicit (lo, hi) zero padding.
      input_dilation: input (lhs) dilation σi: the input is read with σi - 1 zeros between its rows
        (``lax.conv_general_dilated``'s ``lhs_dilation``; > 1 only for transposed convolutions).
    """

    size: int
    kernel: int
    stride: int
    dilation: int
    pad: tuple[int, int]
    input_dilation: int = 1

    @property
    def dilated_size(self) -> int:
        """Length of the input after input dilation: (H-1)σi + 1."""
        return (self.size - 1) * self.input_dilation + 1

    @property
    def extent(self) -> int:
        """Input rows one output row reads: d(R-1)+1."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def out(self) -> int:
        """Output length Ho."""
        return (self.dilated_size + self.pad[0] + self.pad[1] - self.extent) // self.stride + 1

    def window(self, out_rows: int) -> int:
        """Input rows read by ``out_rows`` consecutive output rows."""
        return self.stride * (out_rows - 1) + self.extent

    def _pair_counts(self) -> tuple[list[int], list[int], list[int]]:
        """Real (output p, tap r) pairs - the tap hits a real input row, neither the zero padding nor
        one of the σi - 1 zero rows input dilation inserts - counted per output, per tap and per input
        row."""
        per_out = [0] * self.out
        per_tap = [0] * self.kernel
        per_in = [0] * self.size
        for p in range(self.out):
            for r in range(self.kernel):
                row, phase = divmod(self.stride * p - self.pad[0] + self.dilation * r, self.input_dilation)
                if phase == 0 and 0 <= row < self.size:
                    per_out[p] += 1
                    per_tap[r] += 1
                    per_in[row] += 1
        return per_out, per_tap, per_in

    def real_taps(self) -> tuple[int, int, int, int]:
        """Over the (output p, tap r) pairs whose tap hits a real input row - neither the zero padding
        nor one of the σi - 1 zero rows input dilation inserts between rows: (how many pairs, most
        taps of one output, most outputs of one tap, most pairs reading one input row)."""
        per_out, per_tap, per_in = self._pair_counts()
        return sum(per_out), max(per_out), max(per_tap), max(per_in)

    def touched_rows(self) -> int:
        """Input rows some real (output, tap) pair reads: all ``size`` of them for a stride-1 layer
        without dilation; 1 in σ for a 1×1 stride-σ layer."""
        return sum(1 for count in self._pair_counts()[2] if count)

    def phases(self) -> list[tuple[int, int]]:
        """The input rows by residue mod σ (their *phase*), as ``(taps, rows)`` per phase that some real
        (output, tap) pair reads: ``taps`` is how many of the ``R`` taps read rows of that phase (tap
        ``r`` reads rows ``σp - lo + d·r``, all of residue ``(d·r - lo) mod σ``), ``rows`` how many
        input rows of that phase are read. One phase ``(R, touched_rows)`` at stride 1 and with input
        dilation (whose rows the residue of ``r`` does not fix); a 1×1 stride-σ layer reads one phase
        ``(1, ⌈H/σ⌉)``; a 3×3 stride-2 layer two, ``(2, ·)`` and ``(1, ·)``. The weights of the stride-aware
        Lemma 1 (``docs/lower_bound.md`` §2)."""
        if self.stride == 1 or self.input_dilation > 1:
            return [(self.kernel, self.touched_rows())]
        read = self._pair_counts()[2]
        residues = [(self.dilation * r - self.pad[0]) % self.stride for r in range(self.kernel)]
        out = []
        for phase in range(self.stride):
            rows = sum(1 for row in range(phase, self.size, self.stride) if read[row])
            if rows:
                out.append((residues.count(phase), rows))
        return out


@dataclasses.dataclass(frozen=True)
class HaloPlan:
    """How one spatial dimension split ``parts`` ways exchanges halos.

    Attributes:
      parts: number of blocks P (the mesh axis size).
      in_block: input rows per block Bi = ⌈H/P⌉.
      out_block: output rows per block Bo = ⌈Ho/P⌉.
      left: rows every device receives from its left neighbours (max over blocks of the reach).
      right: rows every device receives from its right neighbours.
      window: input rows a block's outputs read, σ(Bo-1) + d(R-1) + 1 (with input dilation σi: the
        undilated input rows among those dilated rows).
      start: window offset of block 0 inside its extended buffer (left - lo; left - ⌊lo/σi⌋).
      step: how much the offset grows per block, σ·Bo - Bi (σ·Bo/σi - Bi; 0 when input and output
        blocks align).
      local_pad: ``(lo, hi)`` zero padding of the local convolution of the dilated window, so that it
        covers exactly the σ(Bo-1) + d(R-1) + 1 dilated rows of the block ((0, 0) when σi = 1).
    """

    parts: int
    in_block: int
    out_block: int
    left: int
    right: int
    window: int
    start: int
    step: int
    local_pad: tuple[int, int] = (0, 0)

    def left_pieces(self) -> list[tuple[int, int]]:
        """``(hop, rows)`` for the left halo, farthest first: rows taken from the tail of block b-hop."""
        return _pieces(self.left, self.in_block)[::-1]

    def right_pieces(self) -> list[tuple[int, int]]:
        """``(hop, rows)`` for the right halo, nearest first: rows from the head of block b+hop."""
        return _pieces(self.right, self.in_block)

    def received_rows(self, block: int) -> int:
        """Rows block ``block`` receives from other devices (zeros from outside the mesh excluded)."""
        total = 0
        for hop, rows in self.left_pieces():
            total += rows if block - hop >= 0 else 0
        for hop, rows in self.right_pieces():
            total += rows if block + hop < self.parts else 0
        return total


def _pieces(width: int, block: int) -> list[tuple[int, int]]:
    hops = math.ceil(width / block) if width else 0
    return [(j, min(block, width - (j - 1) * block)) for j in range(1, hops + 1)]


def halo_plan(dim: DimGeometry, parts: int) -> HaloPlan:
    """Plans the halo exchange for ``dim`` split into ``parts`` blocks (see the module docstring).

    With input dilation σi > 1, ``Bo`` is rounded up to a multiple of ``σi / gcd(σi, σ)`` so that
    every block's first dilated row has the same phase: block b then reads the undilated rows from
    ``b·σ·Bo/σi - ⌊lo/σi⌋`` on, the same number of them for every block, and its local convolution
    pads the dilated window by the same ``local_pad`` (static shapes, one program for all devices).
    """
    sigma_in = dim.input_dilation
    bi = math.ceil(dim.size / parts)
    bo = math.ceil(dim.out / parts)
    multiple = sigma_in // math.gcd(sigma_in, dim.stride)
    bo = -(-bo // multiple) * multiple
    reach = dim.window(bo)  # dilated rows one block's outputs read
    lo = dim.pad[0]
    lo_in, pad_lo = divmod(lo, sigma_in)  # undilated rows before block start; phase of the first row
    window = (reach - 1 - pad_lo) // sigma_in + 1
    pad_hi = reach - pad_lo - ((window - 1) * sigma_in + 1)
    advance = dim.stride * bo // sigma_in  # undilated rows per block
    left = max(0, max(b * bi - (advance * b - lo_in) for b in range(parts)))
    right = max(0, max(advance * b - lo_in + window - (b + 1) * bi for b in range(parts)))
    return HaloPlan(
        parts=parts,
        in_block=bi,
        out_block=bo,
        left=left,
        right=right,
        window=window,
        start=left - lo_in,
        step=advance - bi,
        local_pad=(pad_lo, pad_hi),
    )


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A 1-, 2- or 3-D channels-last convolution layer: input ``(N, *spatial, C)``, kernel
    ``(*window, C/G, K)``, output ``(N, *spatial_out, K)``.

    Attributes:
      batch, channels_in, channels_out: N, C, K.
      dims: the spatial dimensions in array order (``(W,)``, ``(H, W)`` or ``(D, H, W)``).
      groups: feature group count G (``lax.conv_general_dilated``'s ``feature_group_count``): output
        channel block g of K/G reads only input channel block g of C/G. 1 = dense; C = depthwise.
    """

    batch: int
    channels_in: int
    channels_out: int
    dims: tuple[DimGeometry, ...]
    groups: int = 1

    @property
    def rank(self) -> int:
        """Number of spatial dimensions (1, 2 or 3)."""
        return len(self.dims)

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        """The mesh axes splitting ``dims``: ``("w",)``, ``("h", "w")`` or ``("d", "h", "w")``."""
        return SPATIAL_AXES[self.rank]

    def dim(self, axis: str) -> DimGeometry:
        """The spatial dimension split by mesh axis ``axis`` (``"d"``, ``"h"`` or ``"w"``).

        Raises:
          AttributeError: the layer has no such dimension (e.g. ``"h"`` of a 1-D convolution).
        """
        if axis not in self.spatial_axes:
            raise AttributeError(
                f"a {self.rank}-D convolution has no spatial dimension {axis!r}; its dimensions are "
                f"split over {self.spatial_axes}"
            )
        return self.dims[self.spatial_axes.index(axis)]

    @property
    def d(self) -> DimGeometry:
        """Depth (3-D only)."""
        return self.dim("d")

    @property
    def h(self) -> DimGeometry:
        """Height (2-D and 3-D)."""
        return self.dim("h")

    @property
    def w(self) -> DimGeometry:
        """Width (the length of a 1-D convolution)."""
        return self.dim("w")

    @property
    def window(self) -> tuple[int, ...]:
        """Kernel window ``(*R)``."""
        return tuple(d.kernel for d in self.dims)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, *(d.size for d in self.dims), self.channels_in)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return (*self.window, self.channels_in // self.groups, self.channels_out)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.batch, *(d.out for d in self.dims), self.channels_out)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(d.stride for d in self.dims)

    @property
    def dilation(self) -> tuple[int, ...]:
        return tuple(d.dilation for d in self.dims)

    @property
    def input_dilation(self) -> tuple[int, ...]:
        return tuple(d.input_dilation for d in self.dims)

    @property
    def padding(self) -> tuple[tuple[int, int], ...]:
        return tuple(d.pad for d in self.dims)

    @property
    def dimension_numbers(self) -> tuple[str, str, str]:
        """``lax.conv_general_dilated`` dimension numbers (``("NHWC", "HWIO", "NHWC")`` for 2-D)."""
        return DIMENSION_NUMBERS[self.rank]

    @property
    def flops(self) -> int:
        """2 × the multiply-adds of the forward convolution: ``N·K·(C/G)`` times, per spatial dimension,
        ``Ho·R`` (every tap of every output, taps on the zero padding included: the usual count, e.g.
        torchvision's 4.09 GMACs for ResNet-50) or, in a dimension with input dilation σi > 1 (a
        transposed convolution), only the (output, tap) pairs that hit a real input row
        (:meth:`DimGeometry.real_taps`; ``H·R`` when no tap is cropped, e.g. ``"VALID"``): the taps on
        the inserted zero rows and on the padding are artefacts of writing it as a convolution."""
        taps = math.prod(d.out * d.kernel if d.input_dilation == 1 else d.real_taps()[0] for d in self.dims)
        return 2 * self.batch * self.channels_out * (self.channels_in // self.groups) * taps


def _same_pads(size: int, extent: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return (total // 2, total - total // 2)


def transpose_padding(kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """``(lo, hi)`` padding of the dilated input that ``lax.conv_transpose`` uses for ``"SAME"`` /
    ``"VALID"`` (its ``_conv_transpose_padding`` on the dilated kernel extent ``d(R-1)+1``)."""
    extent = dilation * (kernel - 1) + 1
    if padding == "SAME":
        total = extent + stride - 2
        lo = extent - 1 if stride > extent - 1 else -(-total // 2)
    elif padding == "VALID":
        total = extent + stride - 2 + max(extent - stride, 0)
        lo = extent - 1
    else:
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), got {padding!r}")
    return (lo, total - lo)


def _padding_error(padding: object, rank: int) -> ValueError:
    pairs = ", ".join(["(lo, hi)"] * rank)
    return ValueError(f"padding must be 'SAME', 'VALID' or ({pairs},) of non-negative ints, got {padding!r}")


def conv_geometry(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    input_dilation: int | Sequence[int] = 1,
) -> ConvGeometry:
    """Validates convolution arguments and returns their geometry.

    Args:
      x_shape: ``(N, *spatial, C)`` with 1, 2 or 3 spatial dimensions (``(N, H, W, C)`` in 2-D).
      kernel_shape: ``(*window, C/G, K)``, as many window dimensions as x has spatial ones
        (``(R, S, C, K)`` in 2-D with G = 1).
      strides: int or one per spatial dimension, each ≥ 1.
      padding: ``"SAME"``, ``"VALID"`` or one ``(lo, hi)`` pair of non-negative ints per spatial
        dimension.
      dilation: int or one per spatial dimension, each ≥ 1 (kernel dilation).
      feature_group_count: G ≥ 1, dividing C and K (G = C: depthwise).
      input_dilation: int or one per spatial dimension, each ≥ 1 (input / lhs dilation; ``"SAME"``
        padding is computed for the dilated input); > 1 only with stride 1 in that dimension.

    Raises:
      ValueError: naming the offending argument and what would be valid.
    """
    if len(x_shape) not in (3, 4, 5):
        raise ValueError(
            f"x must have rank 3, 4 or 5 (N, *spatial, C) with 1, 2 or 3 spatial dimensions, got shape "
            f"{tuple(x_shape)}"
        )
    rank = len(x_shape) - 2
    names = tuple(a.upper() for a in SPATIAL_AXES[rank])
    if len(kernel_shape) != rank + 2:
        raise ValueError(
            f"kernel must have rank {rank + 2} ({', '.join(n.lower() for n in names)} window, C/G, K) like "
            f"x of shape {tuple(x_shape)} ({rank} spatial dimensions), got shape {tuple(kernel_shape)}"
        )
    n, *spatial, c = (int(v) for v in x_shape)
    *window, kc, k = (int(v) for v in kernel_shape)
    groups = feature_group_count
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"feature_group_count must be an int >= 1, got {groups!r}")
    if groups > 1 and (c % groups or k % groups):
        raise ValueError(
            f"feature_group_count={groups} must divide both x channels C={c} and kernel output channels "
            f"K={k} (kernel shape {tuple(kernel_shape)}, (*window, C/G, K))"
        )
    if kc * groups != c:
        raise ValueError(
            f"kernel input channels {kc} (kernel shape {tuple(kernel_shape)}, (*window, C/G, K)) must "
            f"equal x channels {c} (x shape {tuple(x_shape)}, channels-last)"
            + (f" divided by feature_group_count={groups}, i.e. {c // groups}" if groups > 1 else "")
        )
    if min(n, *spatial, c, *window, k) < 1:
        raise ValueError(f"empty dimension in x {tuple(x_shape)} or kernel {tuple(kernel_shape)}")
    stride = per_dim(strides, rank, "strides")
    dil = per_dim(dilation, rank, "dilation")
    lhs = per_dim(input_dilation, rank, "input_dilation")
    if any(i > 1 and s > 1 for i, s in zip(lhs, stride, strict=True)):
        raise ValueError(
            f"input_dilation {input_dilation!r} > 1 needs strides 1 in that dimension (a transposed "
            f"convolution), got strides {strides!r}"
        )
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            pads = tuple(
                _same_pads((size - 1) * i + 1, d * (r - 1) + 1, s)
                for size, r, s, d, i in zip(spatial, window, stride, dil, lhs, strict=True)
            )
        elif padding.upper() == "VALID":
            pads = ((0, 0),) * rank
        else:
            raise _padding_error(padding, rank)
    else:
        try:
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            raise _padding_error(padding, rank) from None
        if len(pads) != rank or any(v < 0 for pair in pads for v in pair):
            raise ValueError(
                f"explicit padding must be {rank} (lo, hi) pair{'s' if rank > 1 else ''} of non-negative "
                f"ints (one per spatial dimension), got {padding!r}"
            )
    dims = tuple(DimGeometry(*args) for args in zip(spatial, window, stride, dil, pads, lhs, strict=True))
    geom = ConvGeometry(batch=n, channels_in=c, channels_out=k, dims=dims, groups=groups)
    for name, dim in zip(names, dims, strict=True):
        if dim.out < 1:
            raise ValueError(
                f"output {name} would be {dim.out}: input {name}={dim.size}"
                + (f" dilated by {dim.input_dilation}" if dim.input_dilation > 1 else "")
                + f" with padding {dim.pad} "
                f"is smaller than the dilated kernel extent {dim.extent}"
            )
    return geom


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution of a network.

    Attributes:
      name: unique, readable name (e.g. ``"layer2.0.conv2"``).
      geom: its geometry (batch included).
      repeat: how many identical convolutions this entry stands for (1 unless deduplicated).
      pad_outputs: its output channels are padded to a multiple of its placement's ``k · c`` (a
        classifier head, :class:`jaxcnn.models.common.Head`); the planner
        (:func:`jaxcnn.planner.plan_layer`) then ranks each grid with the channels it will have.
    """

    name: str
    geom: ConvGeometry
    repeat: int = 1
    pad_outputs: bool = False
