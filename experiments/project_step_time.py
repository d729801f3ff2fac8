"""Projected step times from published figures (issue 17, item 8): a model's prediction, not a measurement.

For each (model, devices, preset) it prices with :func:`jaxcnn.timing.presets.preset_profile` (TPU
v5e: 8 chips per host; H100: 8 GPUs per node over NDR InfiniBand), all with SGD-momentum:

- ``auto`` by time and ``auto`` by bytes (both :func:`jaxcnn.planner.model.plan_model`);
- data parallelism (every convolution ``data`` over all devices);
- the best GSPMD program (ResNet-50 and VGG-16; ``experiments/gspmd_step.py``'s plain Flax NNX train
  step, strategies dp, fsdp, spatial and channel, each on its first mesh, largest data axis first),
  compiled here on fake CPU devices and priced from its **metered** collectives
  (:func:`jaxcnn.timing.metered.metered_link`: bytes, latency terms, calls and the cross-host part
  read from the compiled HLO) and the same compute model: each convolution's local passes and
  memory-bound work as jaxcnn's placement with the same per-device work (dp / fsdp: ``data`` over the
  data axis; spatial: ``spatial`` over data × rows where the rows divide, else ``data``; channel:
  ``filter`` over data × model where the output channels divide, else ``data``), plus the launch.
  Overlap as for jaxcnn's plans: on GPU / TPU the gradient reductions (dp and spatial: the
  all-reduces; fsdp: the reduce-scatters; channel: none, its all-reduces are mostly activations')
  hide behind the backward convolutions up to their time.

and prints a markdown table. Run from the repository root (it needs ``devices`` fake CPU devices):

    python experiments/project_step_time.py --devices 64 --models resnet50,vgg16,unet3d
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OPTIMIZER = "momentum"  # the GSPMD step's (optax.sgd with momentum 0.9)


def _built(name: str, devices: int, batch: int, image: int, volume: int):
    """(abstract model, its input shape, mesh sizes) of a model for the projection."""
    from jaxcnn import models
    from jaxcnn.mesh import batch_mesh_sizes, make_mesh

    sizes = batch_mesh_sizes({"n": devices}, batch)
    mesh = make_mesh(**sizes)
    if name == "unet3d":  # width 1 (32 channels first), 3 levels, 1-channel volumes, 2 classes
        built = models.build_abstract(
            "unet", num_classes=2, in_channels=1, mesh=mesh, spatial_dims=3, depth=3
        )
        return built, (volume, volume, volume, 1), sizes
    built = models.build_abstract(name, num_classes=1000, in_channels=3, mesh=mesh)
    return built, (image, image, 3), sizes


def _equivalent(strategy: str, mesh: dict[str, int], geom) -> tuple[str, dict[str, int]]:
    """The jaxcnn placement with the per-device work of a GSPMD strategy's convolution."""
    d = mesh["data"]
    if strategy == "spatial" and geom.dims[0].out % mesh["spatial"] == 0:
        return "spatial", {"n": d, "h": mesh["spatial"]}
    if strategy == "channel" and geom.channels_out % mesh["model"] == 0:
        return "filter", {"n": d, "k": mesh["model"]}
    return "data", {"n": d}


def gspmd_programs(
    name: str, devices: int, batch: int, image: int, hosts: int
) -> list[tuple[str, dict, object]]:
    """``[(strategy, mesh, metered link figures)]``: each strategy's first mesh, compiled and metered."""
    from experiments.gspmd_step import STRATEGIES, build_step, mesh_candidates, mesh_label
    from jaxcnn.measure import meter_compiled
    from jaxcnn.timing.metered import metered_link

    out = []
    for strategy in STRATEGIES:
        for mesh in mesh_candidates(strategy, devices, batch, image)[:1]:
            t0 = time.perf_counter()
            jitted, args, _ = build_step(name, strategy, mesh, batch, image)
            report = meter_compiled(jitted.lower(*args).compile())
            print(f"  gspmd {strategy} {mesh_label(mesh)}: {time.perf_counter() - t0:.0f} s", flush=True)
            out.append((strategy, mesh, metered_link(report, hosts)))
    return out


def gspmd_seconds(model, programs, graph, layers) -> tuple[float, str]:
    """The fastest GSPMD program under ``model``: (seconds, strategy and mesh)."""
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from experiments.gspmd_step import mesh_label
    from jaxcnn.cost import predict
    from jaxcnn.planner.step import grid_key
    from jaxcnn.planner.step_time import node_timer

    timers = {}  # by device count: a placement's own collectives (not used here) need a source on as many

    def timer(name, choice):
        count = math.prod(choice.grid.values())
        if count not in timers:
            timers[count] = node_timer(model, graph, layers, (P("n"), grid_key({"n": count})), 4, OPTIMIZER)
        return timers[count](name, choice)

    best = (float("inf"), "")
    for strategy, mesh, link in programs:
        work = backward = 0.0
        for name, geom in layers.items():
            alg, grid = _equivalent(strategy, mesh, geom)
            t = timer(name, predict(geom, alg, grid))
            work, backward = work + t.compute + t.memory + t.straggle, backward + t.backward
        comm = float(model.comm_seconds(link).max())
        hidden = 0.0
        kind = {"dp": "all-reduce", "spatial": "all-reduce", "fsdp": "reduce-scatter"}.get(strategy)
        if model.asynchronous and kind in link.kinds:
            reductions = link.only(kind)
            hidden = min(float(model.comm_seconds(reductions).max()), backward)
        seconds = work + float(model.profile.launch_s) + comm - hidden
        assert np.isfinite(seconds)
        if seconds < best[0]:
            best = (seconds, f"{strategy} {mesh_label(mesh)}")
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--models", default="resnet50,vgg16,unet3d")
    p.add_argument("--presets", default="tpu-v5e,h100")
    p.add_argument("--batch", type=int, default=256, help="ResNet-50 / VGG-16 batch")
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--unet-batch", type=int, default=0, help="3-D U-Net batch (default: devices / 8)")
    p.add_argument("--volume", type=int, default=128, help="3-D U-Net volume edge")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from jax.sharding import PartitionSpec as P

    from jaxcnn.planner.model import plan_model
    from jaxcnn.planner.step import choices_for, first_conv, grid_key
    from jaxcnn.planner.step_time import step_time
    from jaxcnn.timing.model import TimeModel
    from jaxcnn.timing.presets import get_preset, preset_profile

    rows = [
        "| model | devices | batch | preset (hosts) | auto by time | auto by bytes | data parallelism "
        "| best GSPMD program |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for name in args.models.split(","):
        batch = (args.unet_batch or max(1, args.devices // 8)) if name == "unet3d" else args.batch
        built, shape, sizes = _built(name, args.devices, batch, args.image, args.volume)
        programs: dict[int, list] = {}
        for preset in args.presets.split(","):
            hosts = max(1, args.devices // get_preset(preset).chips_per_host)
            model = TimeModel.of(preset_profile(preset, args.devices, hosts=hosts))
            t0 = time.perf_counter()
            figures = {}
            for objective in ("time", "bytes"):
                plan = plan_model(
                    built, batch, shape, sizes, time_model=model, objective=objective, hosts=hosts,
                    optimizer=OPTIMIZER,
                )  # fmt: skip
                figures[objective] = plan.time.seconds
            graph, layers = built.plan_graph, plan.layers
            figures["data"] = None  # fewer samples than devices: no data parallelism
            if batch % args.devices == 0:
                data = choices_for(
                    layers,
                    {k: ("data", {"n": args.devices}) for k in layers},
                    first=first_conv(graph),
                    hosts=hosts,
                )
                source = (P("n"), grid_key(sizes))
                figures["data"] = step_time(
                    graph, layers, data, source, model, hosts=hosts, optimizer=OPTIMIZER
                ).seconds
            gspmd = "not metered (no plain-Flax 3-D U-Net baseline)"
            if name != "unet3d":
                if hosts not in programs:
                    programs[hosts] = gspmd_programs(name, args.devices, batch, args.image, hosts)
                seconds, which = gspmd_seconds(model, programs[hosts], graph, layers)
                gspmd = f"{seconds * 1e3:.1f} ms ({which})"
            rows.append(
                f"| {name} | {args.devices} | {batch} | {preset} ({hosts}) | "
                + " | ".join(
                    "n/a (batch < devices)" if figures[k] is None else f"{figures[k] * 1e3:.1f} ms"
                    for k in ("time", "bytes", "data")
                )
                + f" | {gspmd} |"
            )
            print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
