"""One train step of a model (logits, gradients, updated state, eval logits) and the comparison of two
models' steps: a distributed model against a single-device reference with the same initial values.

Tolerance: fp32, |a - b| <= 1e-4·|b| + max(1e-5, 1e-4·max|b|) per tensor: gradients pass through tens of
convolutions and BatchNorms whose reductions run in a different order on 8 devices, so single
elements near zero differ by ~2e-5 of the tensor's scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcnn
import jaxcnn.nn as jnn

TOL = dict(rtol=1e-4, atol=1e-5)


def train_step_and_eval(model, x, labels, with_eval=True, compiler_options=None):
    """One jitted program: train-mode logits, parameter grads, updated state, then eval-mode logits.

    Variables without a mesh (a plain ``flax.nnx`` model) live on one device. ``compiler_options``:
    XLA options of the compiled program (e.g. ``{"xla_allow_excess_precision": False}``).
    """
    model.train()
    graphdef, state = nnx.split(model)
    model.eval()
    eval_graphdef = nnx.split(model)[0]
    shardings = jnn.variable_shardings(state, default_mesh=jaxcnn.make_mesh())
    mesh = next(iter(jax.tree.leaves(shardings))).mesh
    replicated = NamedSharding(mesh, P())
    param_shardings = nnx.state(shardings, nnx.Param)

    def step(state, x):
        m = nnx.merge(graphdef, state)

        def loss(m):
            logits = m(x)
            nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
            return nll, logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        new_state = nnx.state(m)
        eval_logits = nnx.merge(eval_graphdef, new_state)(x) if with_eval else logits
        return logits, grads, new_state, eval_logits

    out_shardings = (replicated, param_shardings, shardings, replicated)
    x = jax.device_put(x, replicated)
    compiled = jax.jit(step, out_shardings=out_shardings).lower(state, x).compile(compiler_options)
    return compiled(state, x)


def crop(value, like):
    """``value`` cut to the shape of ``like`` (its leading corner)."""
    return np.asarray(value)[tuple(slice(0, s) for s in np.shape(like))]


def copy_values(source, target):
    """``target`` (a model, possibly abstract) with the values of ``source``'s variables, each cropped
    to the target's shape (a head placed with ``k · c > 1`` pads its classes,
    :class:`jaxcnn.models.common.Head`). Both must have the same variable paths."""
    graphdef, state = nnx.split(target)
    values = jax.device_get(nnx.to_pure_dict(nnx.state(source)))
    nnx.replace_by_pure_dict(state, jax.tree.map(crop, values, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def assert_same_step(ours, ref, x, labels, with_eval=True):
    """The train steps of ``ours`` and ``ref`` agree: logits, gradients, state, eval logits (``ours``
    may carry zero-padded head classes, which must get zero gradients)."""
    got, want = (train_step_and_eval(m, x, labels, with_eval) for m in (ours, ref))
    for what, a_tree, b_tree in zip(("logits", "grads", "state", "eval logits"), got, want, strict=True):
        a_leaves = jax.tree_util.tree_leaves_with_path(a_tree)
        b_leaves = jax.tree_util.tree_leaves_with_path(b_tree)
        assert [p for p, _ in a_leaves] == [p for p, _ in b_leaves], what
        for (path, a), (_, b) in zip(a_leaves, b_leaves, strict=True):
            msg = f"{what} {jax.tree_util.keystr(path)}"
            b = np.asarray(b)
            if what == "grads" and a.shape != b.shape:  # the padded classes get no gradient
                assert not np.asarray(a)[..., b.shape[-1] :].any(), msg
            a = crop(np.asarray(a), b)
            atol = max(TOL["atol"], TOL["rtol"] * float(np.abs(b).max(initial=0.0)))
            np.testing.assert_allclose(np.asarray(a), b, rtol=TOL["rtol"], atol=atol, err_msg=msg)
