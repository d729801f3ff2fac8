"""The train state: an NNX model split into a graphdef (static) and arrays (a plain pytree).

``TrainState`` is a dict pytree so that the jitted step is a pure function of it:

| key | contents |
|---|---|
| ``params`` | ``nnx.State`` of the model's ``nnx.Param`` s |
| ``rest`` | ``nnx.State`` of everything else (BatchNorm statistics, ...) |
| ``opt_state`` | the optax state |
| ``step`` | int32 scalar: optimizer steps taken |
| ``first_bad_step`` | int32 scalar: first step whose loss was NaN/inf, or -1 |

Each leaf keeps the sharding the model created it with (jaxcnn layers create their kernels already
distributed); leaves without a mesh sharding are replicated over the model's mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of the model.

    Attributes:
      train: graphdef in training mode (BatchNorm uses and updates batch statistics).
      eval: graphdef in evaluation mode (running averages).
    """

    train: nnx.GraphDef
    eval: nnx.GraphDef


def leaf_sharding(leaf: jax.Array, mesh: Mesh) -> NamedSharding:
    """The leaf's own ``NamedSharding``, or replicated over ``mesh`` if it has none."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding
    return NamedSharding(mesh, P())


def split_model(model: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
    """``(graphs, params, rest)``; leaves the model in training mode."""
    model.eval()
    eval_graph = nnx.split(model, nnx.Param, ...)[0]
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    return Graphs(train_graph, eval_graph), params, rest


def _shardings(tx: optax.GradientTransformation, params: Any, rest: Any, mesh: Mesh) -> TrainState:
    """Leaf shardings: the model's own; optimizer moments like their parameters; the rest replicated."""
    replicated = NamedSharding(mesh, P())
    opt_abstract = jax.eval_shape(tx.init, params)
    return {
        "params": jax.tree.map(lambda a: leaf_sharding(a, mesh), params),
        "rest": jax.tree.map(lambda a: leaf_sharding(a, mesh), rest),
        "opt_state": optax.tree_map_params(
            tx,
            lambda _, p: leaf_sharding(p, mesh),
            opt_abstract,
            params,
            transform_non_params=lambda _: replicated,
        ),
        "step": replicated,
        "first_bad_step": replicated,
    }


def init_state(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh) -> tuple[Graphs, TrainState]:
    """Splits ``model`` and builds the initial, placed train state.

    Args:
      model: the freshly built model.
      tx: the optimizer.
      mesh: the model's mesh (replicated leaves are placed over it).

    Returns:
      ``(graphs, state)``: parameters and statistics keep the shardings the model gave them, optimizer
      moments are sharded like their parameters, everything else is replicated over ``mesh``.
    """
    graphs, params, rest = split_model(model)
    shardings = _shardings(tx, params, rest, mesh)
    params, rest = jax.device_put((params, rest), (shardings["params"], shardings["rest"]))
    state = {
        "params": params,
        "rest": rest,
        "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params),
        "step": jax.device_put(jnp.zeros((), jnp.int32), shardings["step"]),
        "first_bad_step": jax.device_put(jnp.full((), -1, jnp.int32), shardings["first_bad_step"]),
    }
    return graphs, state


def abstract_state(
    build: Callable[[], nnx.Module], tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[Graphs, TrainState]:
    """Like :func:`init_state` but with ``jax.ShapeDtypeStruct`` leaves: nothing is allocated.

    Args:
      build: builds the model (run under ``nnx.eval_shape``).
      tx: the optimizer.
      mesh: the model's mesh.
    """
    graphs, params, rest = split_model(nnx.eval_shape(build))
    shardings = _shardings(tx, params, rest, mesh)
    shapes = {
        "params": params,
        "rest": rest,
        "opt_state": jax.eval_shape(tx.init, params),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "first_bad_step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    return graphs, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
    )


def state_shardings(state: TrainState) -> Any:
    """The pytree of the state's leaf shardings (the jitted step's ``in_shardings`` / ``out_shardings``)."""
    return jax.tree.map(lambda a: a.sharding, state)


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` s with shardings, for AOT compilation and checkpoint restore."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def merge(graph: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The model with ``state``'s parameters and statistics (e.g. for inspection after training)."""
    return nnx.merge(graph, state["params"], state["rest"])
