"""2D (SUMMA analog): a rows × cols grid, rows = (n, d, h, w), cols = k; the output never moves.

Shapes (global → per device; Pr = n·d·h·w, Pk = k, P = Pr·Pk):
  x (N, H, W, C) → (N/n, ⌈H/h⌉, ⌈W/w⌉, C/Pk)   (input channels split across the k axis)
  kernel (R, S, C, K) → (R, S, C/Pr, K/Pk)      (input channels split across the row axes)
  y (N, Ho, Wo, K) → (N/n, ⌈Ho/h⌉, ⌈Wo/w⌉, K/Pk)

Algorithm: halo exchange (as :mod:`spatial`) on the local x block, then a ``fori_loop`` over
``m = panels`` strided channel panels (``m`` = largest divisor of C/lcm(Pk, Pr) not above
max(Pk, Pr)): per panel, all-gather x's panel over ``k`` (C/m channels of the local window) and the
kernel's panel over the rows (R·S·(C/m)·(K/Pk)), convolve, accumulate in fp32 for low-precision
inputs. Memory stays |x|/P + |kernel|/P + |y|/P + one panel of each; neither operand is ever
gathered whole (m = 1 only when C/lcm(Pk, Pr) = 1).

Collectives (words received per device, Xw = local window rows·cols·batch):
  forward: m all-gathers over k, each Xw·(C/m)·(Pk-1)/Pk; m all-gathers over rows, each
  R·S·(C/m)·(K/Pk)·(Pr-1)/Pr; plus the spatial halo permutes.
  backward (autodiff through the checkpointed loop): m-1 of the panel all-gathers recomputed (panel
  0's gathered panels are kept from the forward pass), m reduce-scatters of dx panels over k and m
  reduce-scatters of dkernel panels over rows (same words as the gathers), the reversed halo
  permutes. Backward ≈ 2× forward, as for SUMMA's two transposed products; 3d keeps the gathered
  operands instead (backward = 1× forward, memory of the whole gathered operands).

Memory (forward temp, per device): halo window + one gathered x panel + one gathered kernel panel +
one panel result in flight (``jaxcnn.cost.predict(...).memory``).

Grouped (G > 1, :mod:`.groups`): k must divide G and Pr must divide K/Pk. x (…, C/Pk) holds whole
groups: no x gather, no streaming (m = 1); kernel (R, S, C/G, K/(Pk·Pr)), split along K, all-gathered
over the rows (R·S·(C/G)·K/Pk·(Pr-1)/Pr words) and its gradient reduce-scattered; y as above.
"""

from jaxcnn.algorithms.base import Algorithm

ALGORITHM = Algorithm(name="2d", axes=("n", "d", "h", "w", "k"), kernel_over_rows=True, streaming=True)
