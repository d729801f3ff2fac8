"""Spatial parallelism: batch and output rows/columns split over ``n, d, h, w``; halos by ppermute.

Shapes (global → per device, P = n·d·h·w):
  x (N, H, W, C) → (N/n, ⌈H/h⌉, ⌈W/w⌉, C) (H, W zero-padded to a multiple of the split);
  kernel → replicated; y (N, Ho, Wo, K) → (N/n, ⌈Ho/h⌉, ⌈Wo/w⌉, K).

Halo (see :mod:`jaxcnn.geometry`): along h every device receives ``left + right`` rows
(``HaloPlan.left/right``: the widest reach over blocks of the window σ(Bo-1)+d(R-1)+1 beyond the
owned block, any stride, dilation, kernel parity or padding), one ppermute per hop; then along w on
the h-extended block (so corners arrive with the w exchange).

Collectives:
  forward: collective-permutes; words received per interior device
  (N/n)·(left_h+right_h)·(W/w)·C + (N/n)·window_h·(left_w+right_w)·C.
  backward: dx the reversed permutes (same words); dkernel one all-reduce over (n, d, h, w) of R·S·C·K
  words (2·RSCK·(P-1)/P received).

Memory per device: |x|/P plus halos, the replicated kernel, |y|/P.

Grouped (G > 1, :mod:`.groups`): any G; the same halos, kernel
(R, S, C/G, K) replicated, local conv with G groups; the dkernel all-reduce moves R·S·(C/G)·K words.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="spatial", axes=("n", "d", "h", "w"), kernel_over_rows=False, streaming=False)
