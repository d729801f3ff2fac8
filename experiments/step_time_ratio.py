"""Step-time ratio of the default model: distributed (the config's mesh and placements) / one device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python experiments/step_time_ratio.py \
        [--config configs/default.yaml] [--steps 50] [key.sub=value ...]

Both programs are the runner's jitted, donated train step on the same batches and the same initial
parameters; the single-device model is the same network with every convolution ``data`` on a 1-device
mesh. Each is compiled ahead of time, warmed up for 5 steps, then timed over ``--steps`` steps (median of
3 repeats). On virtual CPU devices the "distributed" program shares the host's cores, so the ratio
measures the overhead of partitioning and collectives, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
from flax import nnx

import jaxcnn
from jaxcnn.runner import data as data_lib
from jaxcnn.runner import optim, setup, state, step
from jaxcnn.runner.config import from_dict, load_config
from jaxcnn.runner.data import datasets


def time_steps(train_step, st, batches, steps: int, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per step over ``repeats`` timings of ``steps`` steps; returns (time, last loss)."""
    for i in range(5):  # warm-up
        st, metrics = train_step(st, *batches(i))
    jax.block_until_ready(st)
    times = []
    for r in range(repeats):
        inputs = [batches(5 + r * steps + i) for i in range(steps)]  # host work outside the timed region
        t0 = time.perf_counter()
        for x, y in inputs:
            st, metrics = train_step(st, x, y)
        jax.block_until_ready(st)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times), float(metrics["loss"])


def main() -> None:
    """Prints per-step times of both programs and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    data = datasets.load_dataset(cfg.data, cfg.seed)
    tx = optim.optimizer(cfg.optimizer, cfg.train.steps)

    mesh = setup.build_mesh(cfg)
    model = setup.build_model(cfg, mesh, data.num_classes, data.image_shape)
    mesh1 = jaxcnn.make_mesh()
    # The same network and parameters on one device (built abstractly: nothing to initialise twice).
    cfg1 = from_dict(dict(cfg.to_dict(), model=dict(cfg.to_dict()["model"], algorithms="data")))
    abstract1 = nnx.eval_shape(lambda: setup.build_model(cfg1, mesh1, data.num_classes, data.image_shape))
    values = jax.device_put(jax.device_get(nnx.state(model)), jax.devices()[0])
    model1 = nnx.merge(nnx.graphdef(abstract1), values)

    results = {}
    for label, m, msh in (("distributed", model, mesh), ("single", model1, mesh1)):
        graphs, st = state.init_state(m, tx, msh)
        batches = data_lib.TrainBatches(data, cfg.train.batch_size, cfg.seed, msh)
        t0 = time.perf_counter()
        compiled = step.jit_train_step(graphs, tx, st, msh).lower(st, *batches(0)).compile()
        compile_s = time.perf_counter() - t0
        per_step, loss = time_steps(compiled, st, batches, args.steps)
        results[label] = per_step
        print(
            f"{label:<12} mesh {dict(msh.shape)}  compile {compile_s:6.1f} s  step {per_step * 1e3:8.2f} ms  "
            f"{cfg.train.batch_size / per_step:8.0f} images/s  "
            f"loss after {5 + 3 * args.steps} steps {loss:.4f}"
        )
    print(
        f"step-time ratio distributed/single = {results['distributed'] / results['single']:.2f} "
        f"({jax.device_count()} {jax.devices()[0].platform} devices, batch {cfg.train.batch_size}, "
        f"{os.cpu_count()} host cores)"
    )


if __name__ == "__main__":
    main()
