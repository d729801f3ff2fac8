"""Channel (input-channel) parallelism: the reduction over C split over ``c``. Composes with data /
spatial parallelism over ``n, d, h, w``: the kernel is replicated across the row axes and its gradient
all-reduced over them.

Shapes (global → per device; Pr = n·d·h·w, Pc = c):
  x (N, H, W, C) → (N/n, H/h, W/w, C/Pc); kernel (R, S, C, K) → (R, S, C/Pc, K);
  y (N, Ho, Wo, K) → (N/n, Ho/h, Wo/w, K/Pc) (output channels split over c after the reduce-scatter).

Collectives (Y = (N/n)·(Ho/h)·(Wo/w)·K, the local unreduced output):
  forward: halo permutes when h / w are split; one reduce-scatter over ``c`` along K of the partial
  output (operand Y words; Y·(Pc-1)/Pc received) - not an all-reduce.
  backward: dy one all-gather over ``c`` (result Y; same words), reversed halos; dkernel one
  all-reduce over the row axes of R·S·C·K/Pc words (none when Pr = 1).

Memory per device: |x|/P + |kernel|/Pc + the unreduced partial output Y.

Grouped (G > 1, :mod:`.groups`): c must divide G. Then c splits the groups: x (N/n, H/h, W/w, C/Pc),
kernel (R, S, C/G, K/Pc), y (N/n, Ho/h, Wo/w, K/Pc); no reduce-scatter (no collective forward but
the halos), dkernel all-reduce of R·S·(C/G)·K/Pc over the rows.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="channel", axes=("n", "d", "h", "w", "c"), kernel_over_rows=False, streaming=False)
