"""Projected step times from published figures (issue 17, item 8): a model's prediction, not a measurement.

For each (model, devices, preset) it prices with :func:`jaxcnn.timing.presets.preset_profile` (TPU
v5e: 8 chips per host; H100: 8 GPUs per node over NDR InfiniBand) three plans of the whole train step:
``auto`` by time, ``auto`` by bytes (both :func:`jaxcnn.planner.model.plan_model`) and data parallelism
(every convolution ``data`` over all devices), and prints a markdown table. Run from the repository
root (it needs ``devices`` fake CPU devices; planning ResNet-50 for 64 devices takes ~3 minutes):

    python experiments/project_step_time.py --devices 64 --models resnet50,vgg16 --presets tpu-v5e,h100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--models", default="resnet50,vgg16")
    p.add_argument("--presets", default="tpu-v5e,h100")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image", type=int, default=224)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from jax.sharding import PartitionSpec as P

    from jaxcnn import models
    from jaxcnn.mesh import batch_mesh_sizes, make_mesh
    from jaxcnn.planner.model import plan_model
    from jaxcnn.planner.step import choices_for, first_conv, grid_key
    from jaxcnn.planner.step_time import step_time
    from jaxcnn.timing.model import TimeModel
    from jaxcnn.timing.presets import get_preset, preset_profile

    rows = [
        "| model | devices | preset (hosts) | auto by time | auto by bytes | data parallelism |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name in args.models.split(","):
        sizes = batch_mesh_sizes({"n": args.devices}, args.batch)
        built = models.build_abstract(name, num_classes=1000, in_channels=3, mesh=make_mesh(**sizes))
        image = (args.image, args.image, 3)
        for preset in args.presets.split(","):
            hosts = max(1, args.devices // get_preset(preset).chips_per_host)
            model = TimeModel.of(preset_profile(preset, args.devices, hosts=hosts))
            t0 = time.perf_counter()
            figures = {}
            for objective in ("time", "bytes"):
                plan = plan_model(
                    built, args.batch, image, sizes, time_model=model, objective=objective, hosts=hosts
                )
                figures[objective] = plan.time.seconds
            graph, layers = built.plan_graph, plan.layers
            data = choices_for(
                layers,
                {k: ("data", {"n": args.devices}) for k in layers},
                first=first_conv(graph),
                hosts=hosts,
            )
            source = (P("n"), grid_key(sizes))
            figures["data"] = step_time(graph, layers, data, source, model, hosts=hosts).seconds
            rows.append(
                f"| {name} | {args.devices} | {preset} ({hosts}) | "
                + " | ".join(f"{figures[k] * 1e3:.1f} ms" for k in ("time", "bytes", "data"))
                + " |"
            )
            print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
