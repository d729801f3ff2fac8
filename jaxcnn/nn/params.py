"""Shardings of a model's variables, and creating a model with its variables already distributed.

jaxcnn layers annotate each variable with ``out_sharding`` (a PartitionSpec tuple) **and** the
``mesh`` it lives on: layers of one model may run on differently shaped meshes over the same devices
(:mod:`jaxcnn.nn.placement`), so ``nnx.get_named_sharding(state, mesh)`` with one mesh would be wrong.
:func:`variable_shardings` reads both; use it for ``jax.jit(..., out_shardings=...)`` of a train step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from flax import nnx
from flax.nnx.spmd import get_var_pspec
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

M = TypeVar("M", bound=nnx.Module)


def variable_shardings(tree: Any, default_mesh: Mesh | None = None) -> Any:
    """``NamedSharding`` of every variable in ``tree`` (an ``nnx.State`` or a module), same structure.

    A variable's sharding is its ``out_sharding`` metadata on its ``mesh`` metadata; variables without
    a mesh are replicated on ``default_mesh``.

    Raises:
      ValueError: a variable has no mesh and no ``default_mesh`` is given.
    """
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)

    def sharding(v: nnx.Variable) -> nnx.Variable:
        mesh = v.get_metadata("mesh", None) or default_mesh
        if mesh is None:
            raise ValueError(
                f"variable {type(v).__name__} {getattr(v, 'shape', '')} has no mesh; pass default_mesh"
            )
        spec = get_var_pspec(v) or P()
        return v.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(make: Callable[[nnx.Rngs], M], rngs: nnx.Rngs, default_mesh: Mesh | None = None) -> M:
    """Builds ``make(rngs)`` in one compiled program whose outputs are the variables, already sharded.

    The values equal eager construction (same keys, same initializers); ``rngs`` advances as it would.
    One compilation replaces one eager compilation per parameter shape and nothing is ever gathered
    on one device.
    """
    rng_graph, rng_state = nnx.split(rngs)
    graphdefs: list[nnx.GraphDef] = []

    def init(state: nnx.State) -> tuple[nnx.State, nnx.State]:
        local = nnx.merge(rng_graph, state)
        graphdef, model_state = nnx.split(make(local))
        graphdefs.append(graphdef)
        return model_state, nnx.state(local)

    abstract_state, _ = jax.eval_shape(init, rng_state)
    shardings = variable_shardings(abstract_state, default_mesh)
    state, rng_after = jax.jit(init, out_shardings=(shardings, None))(rng_state)
    nnx.update(rngs, rng_after)
    return nnx.merge(graphdefs[-1], state)
