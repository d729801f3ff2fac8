"""The optax optimizer and learning-rate schedule a config asks for."""

from __future__ import annotations

import optax

from jaxcnn.runner.config import OptimizerConfig


def schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step count.

    Args:
      cfg: optimizer config (``learning_rate``, ``schedule``, ``warmup_steps``, ``final_lr_fraction``).
      total_steps: length of the run (the cosine decay horizon).

    Returns:
      ``constant``: the peak rate; ``cosine``: cosine decay from the peak to ``final_lr_fraction`` of it
      over ``total_steps``; ``warmup_cosine``: linear warmup from 0 over ``warmup_steps``, then cosine.
    """
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=cfg.final_lr_fraction)
    return optax.warmup_cosine_decay_schedule(
        0.0,
        lr,
        cfg.warmup_steps,
        max(total_steps, cfg.warmup_steps + 1),
        end_value=lr * cfg.final_lr_fraction,
    )


def optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation: optional gradient clipping, then sgd / momentum / adam / adamw.

    ``weight_decay`` is decoupled for ``adamw`` and an L2 term added to the gradient otherwise.
    """
    lr = schedule(cfg, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.name == "sgd":
        parts.append(optax.sgd(lr))
    elif cfg.name == "momentum":
        parts.append(optax.sgd(lr, momentum=cfg.momentum))
    elif cfg.name == "adam":
        parts.append(optax.adam(lr, b1=cfg.b1, b2=cfg.b2))
    else:
        parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
