"""The jitted train and eval steps: pure functions of (state, batch), explicit shardings, donated state.

Loss: mean softmax cross-entropy over the global batch (computed in float32); accuracy: fraction of
argmax hits. The train step also records the first step whose loss is NaN/inf in
``state["first_bad_step"]``, so the loop can stop at its next metric fetch without a device sync
per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.redistribute import redistribute
from jaxcnn.runner.data import batch_sharding
from jaxcnn.runner.state import Graphs, TrainState, state_shardings

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (float32)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def align_labels(model: nnx.Module, labels: jax.Array, src: NamedSharding | None) -> jax.Array:
    """Moves ``labels`` (laid out as ``src``) to the model's logits layout (``model.head.label_sharding``)
    with an explicit layout change; models without one get them as they are."""
    dst = getattr(getattr(model, "head", None), "label_sharding", None)
    if src is None or not isinstance(dst, NamedSharding):
        return labels
    return redistribute(labels, src, dst)


def train_step_fn(
    graphs: Graphs, tx: optax.GradientTransformation, labels_from: NamedSharding | None = None
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The pure train step ``(state, images, labels) -> (state, {"loss", "accuracy"})``.

    ``labels_from`` is the labels' sharding (the batch's); they move to the logits' layout explicitly.
    """

    def step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
        model = nnx.merge(graphs.train, state["params"], state["rest"])
        labels = align_labels(model, labels, labels_from)

        def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
            logits = model(images)
            return cross_entropy(logits, labels).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        rest = nnx.state(model, nnx.Not(nnx.Param))  # BatchNorm statistics updated by the forward pass
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        bad = ~jnp.isfinite(loss)
        first_bad = jnp.where(bad & (state["first_bad_step"] < 0), state["step"], state["first_bad_step"])
        new_state = {
            "params": params,
            "rest": rest,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "first_bad_step": first_bad,
        }
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": accuracy}

    return step


def eval_step_fn(graphs: Graphs, labels_from: NamedSharding | None = None) -> Callable[..., Metrics]:
    """The pure eval step ``(state, images, labels, mask) -> {"correct", "loss_sum", "count"}`` (sums)."""

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
        model = nnx.merge(graphs.eval, state["params"], state["rest"])
        labels = align_labels(model, labels, labels_from)
        mask = align_labels(model, mask, labels_from)
        logits = model(images)
        hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return {
            "correct": jnp.sum(hits * mask),
            "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
            "count": jnp.sum(mask),
        }

    return step


def _replicated(mesh: Mesh, tree: Any) -> Any:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def jit_train_step(
    graphs: Graphs, tx: optax.GradientTransformation, state: TrainState, mesh: Mesh
) -> Callable[..., tuple[TrainState, Metrics]]:
    """``jax.jit`` of the train step: state shardings in = out, batch over ``n``, state donated."""
    shardings = state_shardings(state)
    batch = batch_sharding(mesh)
    return jax.jit(
        train_step_fn(graphs, tx, batch),
        in_shardings=(shardings, batch, batch),
        out_shardings=(shardings, _replicated(mesh, {"loss": 0, "accuracy": 0})),
        donate_argnums=(0,),
    )


def jit_eval_step(graphs: Graphs, state: TrainState, mesh: Mesh) -> Callable[..., Metrics]:
    """``jax.jit`` of the eval step (nothing donated; the state is read only)."""
    batch = batch_sharding(mesh)
    return jax.jit(
        eval_step_fn(graphs, batch),
        in_shardings=(state_shardings(state), batch, batch, batch),
        out_shardings=_replicated(mesh, {"correct": 0, "loss_sum": 0, "count": 0}),
    )


def abstract_batch(mesh: Mesh, batch_size: int, image_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """``ShapeDtypeStruct`` s of an (images, labels) batch, for AOT compilation."""
    sharding = batch_sharding(mesh)
    return (
        jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32, sharding=sharding),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding),
    )
