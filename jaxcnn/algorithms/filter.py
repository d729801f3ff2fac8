"""Filter (output-channel) parallelism: K split over ``k``; x gathered along ``k``.

Shapes (global → per device, P = k):
  x (N, H, W, C) → (N, H, W, C/P) (channels split over k, the layout a previous filter-parallel
  layer's output has); kernel (R, S, C, K) → (R, S, C, K/P); y (N, Ho, Wo, K) → (N, Ho, Wo, K/P).

Collectives:
  forward: one all-gather of x over ``k`` along C (result N·H·W·C words; N·H·W·C·(P-1)/P received).
  backward: dx one reduce-scatter over ``k`` (operand N·H·W·C; same words); dkernel none.

Memory per device: the gathered x (|x|) + |kernel|/P + |y|/P.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="filter", axes=("k",), kernel_over_rows=False, streaming=False)
