"""Whole-training-step GSPMD baselines: plain Flax NNX ResNet-50 / VGG-16-BN train steps, sharded the way a
JAX user would shard them, compiled on abstract inputs (never run) and metered from the compiled HLO.

Nothing of jaxcnn is used by the models or the step (plain ``nnx.Conv``, ``nnx.BatchNorm`` in train mode,
``nnx.max_pool``, global average pooling + ``nnx.Linear``; softmax cross-entropy; ``optax.sgd`` with
momentum 0.9); only the meter (``jaxcnn.measure.meter_compiled``) comes from jaxcnn.

Strategies (meshes from ``jax.make_mesh`` with ``AxisType.Auto`` axes, i.e. classic GSPMD propagation):

- ``dp``: mesh (data=g, rep=P/g), g = gcd(B, P); images ``P('data')``; parameters replicated.
- ``fsdp`` (ZeRO-3): mesh (data=g, rep=P/g); images ``P('data')``; each parameter sharded over
  ('data', 'rep') along its largest dimension divisible by P (replicated if none), optimizer state alike.
- ``spatial``: mesh (data=d, spatial=s), d·s = P; images ``P('data', 'spatial')``; parameters
  replicated; conv outputs ``P('data', 'spatial')`` where s divides their rows (else left to GSPMD).
- ``channel`` (Megatron-style): mesh (data=d, model=m), d·m = P; images ``P('data')``; convs alternate
  between output channels split (kernel ``P(., ., ., 'model')``, output ``P('data', ., ., 'model')``) and
  input channels split (kernel ``P(., ., 'model', .)``, output ``P('data')``: partial sums all-reduced).

Every conv output gets a ``with_sharding_constraint`` (``P('data')`` for ``dp`` / ``fsdp``).
``channel`` alternates along the main path (stem: K-split, then C-split, K-split, ...); a ResNet
projection shortcut takes the mode of its block's last conv, so both summands of a residual add have the
same layout; BatchNorm parameters follow their conv's output channels; the dense head is replicated.

Worker command line (one strategy, its mesh candidates, in a fresh process; one ``RESULT {json}`` line
per compiled mesh on stdout, ``#MARK <label>`` lines on stderr before each compile)::

    python experiments/gspmd_step.py --devices 64 --model resnet50 --batch 32 --image 224 --strategy spatial
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

STRATEGIES = ("dp", "fsdp", "spatial", "channel")
MODELS = ("resnet50", "vgg16")

Constrain = Callable[[Any, Any], Any]


def _identity(_conv: Any, y: Any) -> Any:
    return y


# ----------------------------------------------------------------------------- models (plain Flax NNX)


def _nnx():
    from flax import nnx

    return nnx


@functools.cache
def _models():
    """Defines the model classes lazily (so ``--help`` and the orchestrator never import JAX)."""
    import jax
    import jax.numpy as jnp

    nnx = _nnx()

    class ConvBN(nnx.Module):
        """``nnx.Conv`` (no bias, SAME) → ``nnx.BatchNorm`` (batch statistics) → optional ReLU.

        ``mode`` ("col": output channels split, "row": input channels split) is only read by the
        ``channel`` strategy's sharding rules; ``out_size`` is the output height (for ``spatial``).
        """

        def __init__(self, cin, cout, kernel, stride, *, mode, relu=True, rngs):
            self.conv = nnx.Conv(
                cin, cout, (kernel, kernel), strides=stride, padding="SAME", use_bias=False, rngs=rngs
            )
            self.bn = nnx.BatchNorm(cout, use_running_average=False, momentum=0.9, rngs=rngs)
            self.relu = relu
            self.mode = mode

        def __call__(self, x, constrain: Constrain = _identity):
            y = constrain(self, self.conv(x))
            y = self.bn(y)
            return nnx.relu(y) if self.relu else y

    def flip(mode: str) -> str:
        return "row" if mode == "col" else "col"

    class Bottleneck(nnx.Module):
        """ResNet v1.5 bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4) + shortcut (1×1 projection if needed)."""

        def __init__(self, cin, width, stride, *, first_mode, rngs):
            cout = 4 * width
            m1 = first_mode
            m2, m3 = flip(m1), m1
            self.conv1 = ConvBN(cin, width, 1, 1, mode=m1, rngs=rngs)
            self.conv2 = ConvBN(width, width, 3, stride, mode=m2, rngs=rngs)
            self.conv3 = ConvBN(width, cout, 1, 1, mode=m3, relu=False, rngs=rngs)
            self.proj = (
                ConvBN(cin, cout, 1, stride, mode=m3, relu=False, rngs=rngs)
                if stride != 1 or cin != cout
                else None
            )

        def __call__(self, x, constrain: Constrain = _identity):
            shortcut = self.proj(x, constrain) if self.proj is not None else x
            y = self.conv3(self.conv2(self.conv1(x, constrain), constrain), constrain)
            return nnx.relu(y + shortcut)

    def head(x, linear):
        return linear(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)

    class ResNet50(nnx.Module):
        """ResNet-50 v1.5 (as jaxcnn.models.resnet): 7×7/2 stem, 3×3/2 max pool, stages (3, 4, 6, 3)."""

        def __init__(self, num_classes, *, in_channels=3, rngs):
            self.stem = ConvBN(in_channels, 64, 7, 2, mode="col", rngs=rngs)
            blocks, cin, mode = [], 64, "row"  # the stem's output is channel-split under ``channel``
            for s, count in enumerate((3, 4, 6, 3)):
                width = 64 * 2**s
                for b in range(count):
                    stride = 2 if s > 0 and b == 0 else 1
                    blocks.append(Bottleneck(cin, width, stride, first_mode=mode, rngs=rngs))
                    cin, mode = 4 * width, flip(mode)  # a bottleneck (3 convs) flips the layout
            self.blocks = nnx.List(blocks)
            self.head = nnx.Linear(cin, num_classes, rngs=rngs)

        def __call__(self, x, constrain: Constrain = _identity):
            x = self.stem(x, constrain)
            x = nnx.max_pool(x, (3, 3), (2, 2), "SAME")
            for blk in self.blocks:
                x = blk(x, constrain)
            return head(x, self.head)

    class VGG16(nnx.Module):
        """VGG-16-BN (as jaxcnn.models.vgg): 13 3×3 Conv+BN+ReLU, 2×2/2 max pool per stage, GAP + dense."""

        def __init__(self, num_classes, *, in_channels=3, rngs):
            convs, pool_after, cin, mode = [], [], in_channels, "col"
            for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
                for cout in stage:
                    convs.append(ConvBN(cin, cout, 3, 1, mode=mode, rngs=rngs))
                    cin, mode = cout, flip(mode)
                pool_after.append(len(convs) - 1)
            self.convs = nnx.List(convs)
            self.pool_after = tuple(pool_after)
            self.head = nnx.Linear(cin, num_classes, rngs=rngs)

        def __call__(self, x, constrain: Constrain = _identity):
            for i, conv in enumerate(self.convs):
                x = conv(x, constrain)
                if i in self.pool_after:
                    x = nnx.max_pool(x, (2, 2), (2, 2))
            return head(x, self.head)

    del jax
    return ConvBN, {"resnet50": ResNet50, "vgg16": VGG16}


def abstract_model(name: str, num_classes: int):
    """The model built under ``nnx.eval_shape`` (no parameter is allocated)."""
    nnx = _nnx()
    _, models = _models()
    return nnx.eval_shape(lambda: models[name](num_classes, rngs=nnx.Rngs(0)))


# ----------------------------------------------------------------------------- meshes and shardings


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mesh_candidates(strategy: str, devices: int, batch: int, image: int) -> list[dict[str, int]]:
    """Mesh shapes ``{axis: size}`` tried for a strategy (all even factorizations of ``devices``), the
    largest data axis first.

    ``dp`` / ``fsdp``: one mesh, batch over gcd(batch, devices). ``spatial``: data·spatial = devices
    with data | batch, 1 < spatial and spatial | image. ``channel``: data·model = devices with
    data | batch and 1 < model ≤ 64 (every conv of both models has ≥ 64 output channels).
    """
    g = math.gcd(batch, devices)
    if strategy in ("dp", "fsdp"):
        return [{"data": g, "rep": devices // g}]
    axis = {"spatial": "spatial", "channel": "model"}[strategy]
    out = []
    for d in sorted(divisors(devices), reverse=True):
        s = devices // d
        if batch % d or s == 1:
            continue
        if strategy == "spatial" and image % s:
            continue
        if strategy == "channel" and s > 64:
            continue
        out.append({"data": d, axis: s})
    return out


def mesh_label(mesh_shape: dict[str, int]) -> str:
    return "x".join(f"{a}{s}" for a, s in mesh_shape.items())


def _path_names(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(out)


def param_specs(model, params, strategy: str, mesh_shape: dict[str, int]):
    """A ``PartitionSpec`` per parameter (same tree as ``params``)."""
    import jax
    from jax.sharding import PartitionSpec as P

    nnx = _nnx()
    conv_cls, _ = _models()
    devices = math.prod(mesh_shape.values())
    modes = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, conv_cls):
            modes[tuple(path)] = node.mode
    model_size = mesh_shape.get("model", 1)

    def spec(path, leaf) -> P:
        names = _path_names(path)
        names = names[:-1] if names and names[-1] == "value" else names
        shape = leaf.shape
        if strategy == "fsdp":
            dims = [i for i, n in enumerate(shape) if n % devices == 0]
            if not dims:
                return P()
            best = max(dims, key=lambda i: (shape[i], i))
            entries: list[Any] = [None] * len(shape)
            entries[best] = ("data", "rep")
            return P(*entries)
        if strategy == "channel":
            mode = modes.get(tuple(names[:-2]))
            if mode is None:  # the head
                return P()
            kind = names[-2:]
            if kind == ("conv", "kernel"):
                dim = 3 if mode == "col" else 2
                if shape[dim] % model_size:
                    return P()
                entries = [None] * 4
                entries[dim] = "model"
                return P(*entries)
            if kind[0] == "bn" and mode == "col" and shape[0] % model_size == 0:
                return P("model")
            return P()
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def make_constrain(strategy: str, mesh) -> Constrain:
    """The ``with_sharding_constraint`` applied to every conv output."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    shape = dict(mesh.shape)

    def constrain(conv, y):
        if strategy in ("dp", "fsdp"):
            spec = P("data")
        elif strategy == "spatial":
            if y.shape[1] % shape["spatial"]:
                return y  # rows not divisible: left to GSPMD's propagation
            spec = P("data", "spatial")
        else:
            if conv.mode == "col" and y.shape[3] % shape["model"] == 0:
                spec = P("data", None, None, "model")
            else:
                spec = P("data")
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))

    return constrain


# ----------------------------------------------------------------------------- the train step


def build_step(
    model_name: str,
    strategy: str,
    mesh_shape: dict[str, int],
    batch: int,
    image: int,
    num_classes: int = 1000,
):
    """``(jitted step, abstract args, num_param_bytes)`` for one strategy on one mesh."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    nnx = _nnx()
    mesh = jax.make_mesh(
        tuple(mesh_shape.values()), tuple(mesh_shape), axis_types=(AxisType.Auto,) * len(mesh_shape)
    )
    model = abstract_model(model_name, num_classes)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = jax.eval_shape(tx.init, params)

    def named(spec_tree):
        return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree, is_leaf=lambda s: isinstance(s, P))

    p_sh = named(param_specs(model, params, strategy, mesh_shape))
    s_sh = jax.tree.map(lambda _: NamedSharding(mesh, P()), stats)
    o_sh = optax.tree_map_params(
        tx, lambda _, sh: sh, opt_state, p_sh, transform_non_params=lambda _: NamedSharding(mesh, P())
    )
    x_spec = P("data", "spatial") if strategy == "spatial" else P("data")
    x_sh, y_sh = NamedSharding(mesh, x_spec), NamedSharding(mesh, P("data"))
    constrain = make_constrain(strategy, mesh)

    def step(params, stats, opt_state, images, labels):
        model = nnx.merge(graphdef, params, stats)

        def loss_fn(m):
            logits = m(images, constrain)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        new_stats = nnx.state(model, nnx.BatchStat)  # updated by the train-mode forward pass
        updates, new_opt = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, new_opt, loss

    jitted = jax.jit(
        step,
        in_shardings=(p_sh, s_sh, o_sh, x_sh, y_sh),
        out_shardings=(p_sh, s_sh, o_sh, NamedSharding(mesh, P())),
        donate_argnums=(0, 1, 2),
    )

    def abstract(tree, shardings):
        return jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), tree, shardings
        )

    args = (
        abstract(params, p_sh),
        abstract(stats, s_sh),
        abstract(opt_state, o_sh),
        jax.ShapeDtypeStruct((batch, image, image, 3), jnp.float32, sharding=x_sh),
        jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=y_sh),
    )
    param_bytes = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(params))
    return jitted, args, param_bytes


def compile_and_meter(
    model_name: str,
    strategy: str,
    mesh_shape: dict[str, int],
    batch: int,
    image: int,
    num_classes: int = 1000,
) -> dict[str, Any]:
    """Compiles one strategy's train step (never runs it) and meters it.

    Returns:
      ``{"mesh", "bytes" (max over devices, per step), "temp_bytes", "compile_time_s",
      "param_bytes", "collectives"}``.
    """
    from jaxcnn.measure import meter_compiled

    t0 = time.perf_counter()
    jitted, args, param_bytes = build_step(model_name, strategy, mesh_shape, batch, image, num_classes)
    compiled = jitted.lower(*args).compile()
    elapsed = time.perf_counter() - t0
    report = meter_compiled(compiled)
    memory = report.memory
    return {
        "mesh": mesh_label(mesh_shape),
        "bytes": float(report.max_bytes),
        "temp_bytes": None if memory is None else memory.temp_bytes,
        "compile_time_s": round(elapsed, 2),
        "param_bytes": param_bytes,
        "collectives": {k: [v.count, float(v.max_bytes)] for k, v in report.by_kind.items() if v.count},
    }


# ----------------------------------------------------------------------------- worker CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--image", type=int, required=True)
    p.add_argument("--strategy", choices=STRATEGIES, required=True)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--mesh", action="append", help="only these meshes (labels such as data8xspatial8)")
    p.add_argument("--max-meshes", type=int, default=0, help="only the first N candidates (0: all)")
    args = p.parse_args(argv)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={args.devices}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if jax.device_count() != args.devices:
        print(f"need {args.devices} devices, JAX has {jax.device_count()}", file=sys.stderr)
        return 2
    meshes = mesh_candidates(args.strategy, args.devices, args.batch, args.image)
    if args.mesh:
        meshes = [m for m in meshes if mesh_label(m) in args.mesh]
    if args.max_meshes > 0:
        meshes = meshes[: args.max_meshes]
    if not meshes:
        print("RESULT " + json.dumps({"mesh": None, "error": "no even mesh for this shape"}), flush=True)
        return 0
    for mesh_shape in meshes:
        label = mesh_label(mesh_shape)
        print(f"#MARK {label}", file=sys.stderr, flush=True)
        try:
            row = compile_and_meter(
                args.model, args.strategy, mesh_shape, args.batch, args.image, args.num_classes
            )
        except Exception as e:  # record why a mesh cannot compile and go on
            row = {"mesh": label, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        print("RESULT " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
