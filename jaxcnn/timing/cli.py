"""``jaxcnn calibrate [--cpu-devices N] [--quick] [--dir DIR]``: measure this backend, save its profile."""

from __future__ import annotations

import argparse
import sys

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jaxcnn.devices import cpu_devices_problem
from jaxcnn.files import check_writable
from jaxcnn.timing import calibrate as calibration
from jaxcnn.timing.profile import profile_dir, save_profile


def parser() -> argparse.ArgumentParser:
    """The ``jaxcnn calibrate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="jaxcnn calibrate",
        description="Time this backend's collectives, local convolutions and memory-bound work, fit the "
        "step-time model's rates and save them as the backend's timing profile (docs/step_time.md).",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="give the CPU platform N virtual devices first (as jaxcnn train --cpu-devices)",
    )
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (seconds, for a smoke test)")
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="where profiles are kept (default: $JAXCNN_PROFILE_DIR, else ~/.cache/jaxcnn/profiles)",
    )
    return p


def _fail(message: str) -> int:
    print(f"jaxcnn calibrate: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Calibrates and saves; prints the fitted rates. 2 (one line) for a usage mistake."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpu_devices is not None:
        problem = cpu_devices_problem(args.cpu_devices, 2, " (collectives need two devices)")
        if problem:
            return _fail(problem)
    try:
        measured = calibration.plan(jax.device_count(), args.quick)
    except ValueError as e:
        return _fail(str(e))
    directory = profile_dir(args.dir)
    try:  # before a minute of measuring, not after
        check_writable(directory)
    except OSError as e:
        return _fail(f"cannot write the profile under {directory}: {e.strerror or e}")
    console = Console()
    columns = (TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("calibrating", total=measured.measurements)

        def progress(what: str) -> None:
            bar.update(task, description=what[:48], advance=1)

        profile = calibration.calibrate(args.quick, progress)
    try:
        path = save_profile(profile, directory)
    except OSError as e:
        return _fail(f"cannot write the profile under {directory}: {e.strerror or e}")
    key = profile.key
    console.print(
        f"{key.platform} ({key.device_kind}) x {key.device_count}, jax {key.jax_version}: calibrated in "
        f"{profile.calibration_s:.0f} s"
    )
    for kind, fit in profile.collectives.items():
        console.print(
            f"  {kind:<19} α {fit.alpha_s * 1e6:8.1f} µs/step   β {fit.beta_bytes_per_s / 1e9:8.3f} GB/s"
        )
    for name, fit in profile.conv.items():
        macs, nbytes = fit.rates
        fixed = fit.intercept_s * 1e6
        console.print(
            f"  conv {name:<14} {macs / 1e9:8.2f} GMAC/s  {nbytes / 1e9:8.2f} GB/s  + {fixed:.1f} µs"
        )
    if profile.memory is not None:
        console.print(f"  memory-bound        {profile.memory.rates[0] / 1e9:8.2f} GB/s")
    if profile.barrier is not None:
        per_step, share = (1 / r if r > 0 else 0.0 for r in profile.barrier.rates)
        console.print(
            f"  collective in a step  + {profile.barrier.intercept_s * 1e6:.1f} µs "
            f"+ {per_step * 1e6:.1f} µs/step + {share:.0%} of the work before it"
        )
    console.print(f"  program launch      {profile.launch_s * 1e6:8.1f} µs")
    console.print(f"profile: {path}", soft_wrap=True)  # a path to copy: never wrapped
    return 0
