"""Stopping a run whose training loss went bad: NaN/inf, or grown past ``train.divergence_factor`` times
its early value.

Both checks run where the loop fetches metrics (every ``train.log_every`` steps, and at eval and
checkpoint steps), before anything of the fetched steps is logged or saved, so the newest checkpoint is
the last good one. The error names the step and that checkpoint; ``jaxcnn train`` prints it as one line
and exits 1.

- **Non-finite.** The train step records the first step whose loss was NaN/inf on the device
  (``state["first_bad_step"]``, :mod:`jaxcnn.runner.step`): :class:`NonFiniteLossError`.
- **Diverged.** A loss can explode and stay finite: SGD at learning rate 1e6 on ``configs/default.yaml``
  has loss 2.39 at step 1 and 9.9e9 at step 2, then wanders between 2e4 and 7e5 and used to finish with
  a final train loss of 79481 and exit 0. :class:`DivergenceCheck` stops at the first step whose loss
  exceeds ``factor`` times the run's *reference*: :class:`DivergedError`.

The reference is the lowest per-step loss of the run's first fetched steps (steps 1 to
``train.log_every``). It is at most the loss of the initial parameters, about ln(classes) for a
classifier (2.3 for 10 classes: a uniform guess), the level a learning run only goes below. Not the
logged mean of those steps: a blow-up inside them is in the mean (in the example above the first 20
steps average 5e8, and a bound 100 times that is never reached), while their lowest loss still is the
starting level, so the check catches it at step 2. The default factor, 100, puts the bound far above
anything a learning run shows (with 10 classes, a mean loss of 230 nats: the true class given a
log-probability of -230 on average) and far below what a divergent one reaches within a few steps. A
reference of 0 (a loss that is exactly 0 from the start) leaves nothing to compare with: no divergence
check then.

Each checkpoint keeps the reference (:meth:`jaxcnn.runner.checkpoint.Checkpointer.save`'s ``notes``),
so a resumed run compares with its run's early loss rather than with the lower loss it resumes at (a
checkpoint without one, from an older version, gives the resumed run's first steps as the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxcnn.runner.checkpoint import Checkpointer


class DivergedError(RuntimeError):
    """The training loss grew past ``train.divergence_factor`` times its early value (or, as the
    subclass :class:`NonFiniteLossError`, became NaN/inf); the run stopped and kept its last good
    checkpoint."""


class NonFiniteLossError(DivergedError):
    """The training loss became NaN or inf; the run stopped and kept its last good checkpoint."""


def last_good(ckpt: Checkpointer | None) -> str:
    """``"step N in DIR. <what to do next>"``: the newest checkpoint (saved before the bad step was
    found), or why there is none, and how to go on from there."""
    last = ckpt.latest_step() if ckpt else None
    if last is None:
        why = "no checkpoint was saved yet" if ckpt else "checkpoint.enabled is false"
        return f"none ({why}). Rerun with a lower optimizer.learning_rate (or optimizer.grad_clip_norm)."
    return (
        f"step {last} in {ckpt.directory}. To go on, resume=true with a lower optimizer.learning_rate, or "
        "start over with overwrite=true and a lower learning rate (or optimizer.grad_clip_norm)."
    )


def non_finite(bad_step: int, ckpt: Checkpointer | None) -> NonFiniteLossError:
    """The error for a NaN/inf loss at 0-based step ``bad_step`` (``state["first_bad_step"]``)."""
    return NonFiniteLossError(
        f"training loss became NaN/inf at step {bad_step + 1}; stopping. Last good checkpoint: "
        f"{last_good(ckpt)}"
    )


class DivergenceCheck:
    """Stops a run at the first step whose loss exceeds ``factor`` times the run's reference loss.

    Args:
      factor: ``train.divergence_factor`` (0: never stop).
      reference: the run's reference loss, as a checkpoint saved it; None: the lowest loss of the first
        steps :meth:`check` is given.
    """

    def __init__(self, factor: float, reference: float | None = None) -> None:
        self.factor = factor
        self.reference = reference

    def check(self, first_step: int, losses: Sequence[float], ckpt: Checkpointer | None) -> None:
        """Checks the per-step ``losses`` of steps ``first_step, first_step + 1, ...`` (1-based, all
        finite); the first call without a reference takes their lowest as the reference.

        Raises:
          DivergedError: a loss exceeds ``factor`` times the reference (the first such step is named).
        """
        if self.reference is None and losses:
            self.reference = float(min(losses))
        if not self.factor or not self.reference or self.reference <= 0:
            return
        bound = self.factor * self.reference
        for i, loss in enumerate(losses):
            if loss > bound:
                raise DivergedError(
                    f"training loss diverged at step {first_step + i}: {loss:.6g} is over "
                    f"train.divergence_factor={self.factor:g} times its early value {self.reference:.4g}; "
                    f"stopping. Last good checkpoint: {last_good(ckpt)} train.divergence_factor=0 turns "
                    "this check off."
                )
