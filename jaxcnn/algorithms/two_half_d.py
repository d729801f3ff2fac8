"""2.5D: the 2D grid replicated ``c`` times (the depth); each depth layer streams C/c channels.

Shapes (global → per device; Pr = n·d·h·w, Pk = k, Pc = c, P = Pr·Pk·Pc):
  x (N, H, W, C) → (N/n, ⌈H/h⌉, ⌈W/w⌉, C/(Pc·Pk))  (channels split over (c, k))
  kernel (R, S, C, K) → (R, S, C/(Pc·Pr), K/Pk)     (channels split over (c, n, d, h, w))
  y (N, Ho, Wo, K) → (N/n, ⌈Ho/h⌉, ⌈Wo/w⌉, K/(Pk·Pc)) (output channels split over (k, c))

Algorithm: depth layer ``c`` runs :mod:`two_d` on its C/Pc channels (m streamed panels), then the
partial outputs are reduce-scattered over ``c`` along K. ``2d`` is the depth-1 case and ``3d`` the
no-streaming (m = 1) limit of this same code path.

Collectives (words received per device, Xw = local window batch·rows·cols):
  forward: m all-gathers over k of Xw·C/(Pc·m)·(Pk-1)/Pk; m all-gathers over rows of
  R·S·C/(Pc·m)·K/Pk·(Pr-1)/Pr; one reduce-scatter over c of (N/n)(Ho/h)(Wo/w)(K/Pk)·(Pc-1)/Pc;
  halo permutes.
  backward: one all-gather of dy over c (same words as the forward reduce-scatter), m-1 of each panel
  gather recomputed (the checkpointed loop; panel 0's are kept), m reduce-scatters of dx panels over k,
  m of dkernel panels over rows, reversed halos.

Memory: |x|/P + |kernel|/P + |y|·Pc/P (the unreduced partial output) + one panel of each operand.

Grouped (G > 1, :mod:`.groups`): k·c must divide G and Pr must divide K/(Pk·Pc). x, the kernel's K and
y are split over (k, c): x (…, C/(Pk·Pc)), kernel (R, S, C/G, K/(Pk·Pc·Pr)) all-gathered over the rows
(R·S·(C/G)·K/(Pk·Pc)·(Pr-1)/Pr words), y (…, K/(Pk·Pc)); no x gather, no streaming, no reduce-scatter.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="2.5d", axes=("n", "d", "h", "w", "k", "c"), kernel_over_rows=True, streaming=True)
