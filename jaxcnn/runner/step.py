"""The jitted train, eval and predict steps: pure functions of (state, batch), explicit shardings.

Loss: mean softmax cross-entropy over the global batch (computed in float32); accuracy: fraction of
argmax hits. A segmentation model (``model.task == "segmentation"``, the U-Net) has logits
``(N, *spatial, classes)`` and labels ``(N, *spatial)``: the same formulas per voxel (loss and accuracy
averaged over every voxel of the batch), and the eval step also sums what the foreground Dice
coefficient is made of (:func:`dice`). The train step also records the first step whose loss is NaN/inf in
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

from jaxcnn.models.protocol import Network
from jaxcnn.redistribute import redistribute
from jaxcnn.runner.data import batch_sharding
from jaxcnn.runner.state import Graphs, TrainState, state_shardings

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (float32)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def foreground_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """``{"intersection", "predicted", "target"}``: voxels where prediction and label are both foreground
    (any class but 0), predicted foreground voxels and labelled foreground voxels, where ``mask`` is 1."""
    predicted = (jnp.argmax(logits, -1) > 0).astype(jnp.float32) * mask
    target = (labels > 0).astype(jnp.float32) * mask
    return {
        "intersection": jnp.sum(predicted * target),
        "predicted": jnp.sum(predicted),
        "target": jnp.sum(target),
    }


def dice(intersection: float, predicted: float, target: float) -> float:
    """The Dice coefficient ``2·|P ∩ T| / (|P| + |T|)`` of foreground sums (1.0 when both are empty)."""
    total = float(predicted) + float(target)
    return 1.0 if total == 0 else 2.0 * float(intersection) / total


def align_labels(model: Network, labels: jax.Array, src: NamedSharding | None) -> jax.Array:
    """Moves ``labels`` (laid out as ``src``) to the model's logits layout (``model.head.label_sharding``,
    :class:`jaxcnn.models.protocol.ModelHead`) with an explicit layout change; with ``src`` None they
    stay as they are."""
    if src is None:
        return labels
    return redistribute(labels, src, model.head.label_sharding)


def train_step_fn(
    graphs: Graphs, tx: optax.GradientTransformation, labels_from: NamedSharding | None = None
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The pure train step ``(state, images, labels) -> (state, {"loss", "accuracy"})``.

    ``labels_from`` is the labels' sharding (the batch's); they move to the logits' layout explicitly.
    """

    # named for the profiler: the compiled program is jit_train_step in a trace (train.profile_steps)
    def train_step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
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

    return train_step


def eval_keys(task: str) -> tuple[str, ...]:
    """The sums the eval step of a ``task`` model returns."""
    base = ("correct", "loss_sum", "count")
    return (*base, "intersection", "predicted", "target") if task == "segmentation" else base


def eval_step_fn(
    graphs: Graphs, labels_from: NamedSharding | None = None, task: str = "classification"
) -> Callable[..., Metrics]:
    """The pure eval step ``(state, images, labels, mask) -> {"correct", "loss_sum", "count"}`` (sums over
    the real rows: ``mask`` is 1 for them). For ``task="segmentation"`` the sums are over voxels and the
    foreground sums of :func:`foreground_sums` are added."""

    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
        model = nnx.merge(graphs.eval, state["params"], state["rest"])
        if labels.ndim > 1:  # one label per voxel: one mask entry per voxel, laid out like the labels
            mask = jnp.broadcast_to(mask.reshape(-1, *(1,) * (labels.ndim - 1)), labels.shape)
            if labels_from is not None:
                mask = jax.lax.with_sharding_constraint(mask, labels_from)
        labels = align_labels(model, labels, labels_from)
        mask = align_labels(model, mask, labels_from)
        logits = model(images)
        hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        sums = {
            "correct": jnp.sum(hits * mask),
            "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
            "count": jnp.sum(mask),
        }
        if task == "segmentation":
            sums.update(foreground_sums(logits, labels, mask))
        return sums

    return eval_step


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


def jit_eval_step(
    graphs: Graphs, state: TrainState, mesh: Mesh, task: str = "classification"
) -> Callable[..., Metrics]:
    """``jax.jit`` of the eval step (nothing donated; the state is read only)."""
    batch = batch_sharding(mesh)
    return jax.jit(
        eval_step_fn(graphs, batch, task),
        in_shardings=(state_shardings(state), batch, batch, batch),
        out_shardings=_replicated(mesh, dict.fromkeys(eval_keys(task), 0)),
    )


def jit_predict_step(
    graphs: Graphs, state: TrainState, mesh: Mesh
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``jax.jit`` of ``(state, images) -> (predictions, probabilities)``: the eval-mode model's argmax
    (int32 classes, per voxel for segmentation) and softmax (float32), replicated (every process can read
    them). ``state`` needs only ``params`` and ``rest``."""

    def step(state: TrainState, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graphs.eval, state["params"], state["rest"])(images).astype(jnp.float32)
        return jnp.argmax(logits, -1).astype(jnp.int32), jax.nn.softmax(logits, -1)

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(state_shardings(state), batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
    )


def label_shape(task: str, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one example's labels: ``()`` (a class) or, for segmentation, ``image_shape[:-1]``."""
    return tuple(image_shape[:-1]) if task == "segmentation" else ()


def abstract_batch(
    mesh: Mesh, batch_size: int, image_shape: tuple[int, ...], task: str = "classification"
) -> tuple[Any, Any]:
    """``ShapeDtypeStruct`` s of an (images, labels) batch, for AOT compilation."""
    sharding = batch_sharding(mesh)
    return (
        jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32, sharding=sharding),
        jax.ShapeDtypeStruct((batch_size, *label_shape(task, image_shape)), jnp.int32, sharding=sharding),
    )
