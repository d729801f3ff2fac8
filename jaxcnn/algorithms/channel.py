"""Channel (input-channel) parallelism: the reduction over C split over ``c``.

Shapes (global → per device, P = c):
  x (N, H, W, C) → (N, H, W, C/P); kernel (R, S, C, K) → (R, S, C/P, K);
  y (N, Ho, Wo, K) → (N, Ho, Wo, K/P) (output channels split over c after the reduce-scatter).

Collectives:
  forward: one reduce-scatter over ``c`` along K of the partial output (operand N·Ho·Wo·K words;
  N·Ho·Wo·K·(P-1)/P received) - not an all-reduce.
  backward: dy one all-gather over ``c`` (result N·Ho·Wo·K; same words); dx, dkernel local.

Memory per device: |x|/P + |kernel|/P + the unreduced partial output |y|.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="channel", axes=("c",), kernel_over_rows=False, streaming=False)
