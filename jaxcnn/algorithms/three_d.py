"""3D: a grid (n, d, h, w) × k × c; x gathered along k, kernel along the rows, outputs reduce-scattered
along c. Least communication, most memory.

Shapes (global → per device; Pr = n·d·h·w, Pk = k, Pc = c, P = Pr·Pk·Pc):
  x (N, H, W, C) → (N/n, ⌈H/h⌉, ⌈W/w⌉, C/(Pc·Pk))  (channels split over (c, k))
  kernel (R, S, C, K) → (R, S, C/(Pc·Pr), K/Pk)     (channels split over (c, n, d, h, w))
  y (N, Ho, Wo, K) → (N/n, ⌈Ho/h⌉, ⌈Wo/w⌉, K/(Pk·Pc)) (output channels split over (k, c))

Collectives (words received per device, Xw = local window batch·rows·cols):
  forward: one all-gather of x over k (result Xw·C/Pc; Xw·C/Pc·(Pk-1)/Pk received), one all-gather
  of the kernel over the rows (result R·S·(C/Pc)·(K/Pk); ·(Pr-1)/Pr received), one reduce-scatter of
  the partial output over c (operand (N/n)(Ho/h)(Wo/w)(K/Pk); ·(Pc-1)/Pc received), halo permutes.
  backward: all-gather of dy over c, reduce-scatter of dx over k, reduce-scatter of dkernel over the
  rows (each the same words as its forward dual), reversed halo permutes; the gathered x and kernel
  are kept from the forward pass (no recomputation).

Memory (forward temp, per device): Xw·C/Pc (gathered x) + R·S·(C/Pc)·(K/Pk) (gathered kernel) + the
unreduced partial output (N/n)(Ho/h)(Wo/w)(K/Pk) when Pc > 1, on top of the 1/P shares. The same code
as :mod:`two_half_d` with m = 1.

Grouped (G > 1, :mod:`.groups`): as :mod:`two_half_d` (k·c must divide G, Pr must divide K/(Pk·Pc)):
only the kernel moves, all-gathered over the rows along K.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="3d", axes=("n", "d", "h", "w", "k", "c"), kernel_over_rows=True, streaming=False)
