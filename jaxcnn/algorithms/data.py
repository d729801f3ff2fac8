"""Data parallelism: the batch is split over ``n``; the kernel is replicated.

Shapes (global → per device, P = n):
  x (N, H, W, C) → (N/P, H, W, C); kernel (R, S, C, K) → replicated; y (N, Ho, Wo, K) → (N/P, Ho, Wo, K).

Collectives:
  forward: none.
  backward: dx none; dkernel one all-reduce over ``n`` of R·S·C·K words
  (2·RSCK·(P-1)/P words received per device).

Memory per device: |x|/P + |kernel| + |y|/P (plus the replicated kernel gradient in backward).

Grouped (G > 1, :mod:`.groups`): any G; kernel (R, S, C/G, K) replicated, local conv with G groups;
the dkernel all-reduce moves R·S·(C/G)·K words.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="data", axes=("n",), kernel_over_rows=False, streaming=False)
