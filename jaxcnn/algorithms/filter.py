"""Filter (output-channel) parallelism: K split over ``k``; x gathered along ``k``. Composes with
data / spatial parallelism over ``n, d, h, w`` (the Megatron-style "tensor × data" hybrid): the kernel is
replicated across the row axes and its gradient all-reduced over them.

Shapes (global → per device; Pr = n·d·h·w, Pk = k):
  x (N, H, W, C) → (N/n, H/h, W/w, C/Pk) (channels split over k, the layout a previous
  filter-parallel layer's output has); kernel (R, S, C, K) → (R, S, C, K/Pk);
  y (N, Ho, Wo, K) → (N/n, Ho/h, Wo/w, K/Pk).

Collectives (Xw = local window batch·rows·cols, = N·H·W when no row axis is split):
  forward: halo permutes when h / w are split; one all-gather of x over ``k`` along C (result Xw·C
  words; Xw·C·(Pk-1)/Pk received).
  backward: dx one reduce-scatter over ``k`` (operand Xw·C; same words), reversed halos; dkernel one
  all-reduce over the row axes of R·S·C·K/Pk words (none when Pr = 1).

Memory per device: the gathered x window (Xw·C) + |kernel|/Pk + |y|/P.

Grouped (G > 1, :mod:`.groups`): any G. When k divides G (group parallelism) x (N/n, H/h, W/w, C/Pk)
already holds the channels of the device's G/Pk groups: no gather at all; kernel (R, S, C/G, K/Pk),
dkernel all-reduce of R·S·(C/G)·K/Pk over the rows. Otherwise (C, K multiples of Pk) x is gathered
over k as above and each device keeps its groups' channels (lcm(G, Pk)/Pk local groups).
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="filter", axes=("n", "d", "h", "w", "k"), kernel_over_rows=False, streaming=False)
