"""The training loop: data → jitted step under ``transfer_guard("disallow")`` → metrics, eval, checkpoints.

Per step the loop only dispatches work: it builds the global batch (an explicit host-to-device transfer)
and calls the AOT-compiled step, both inside ``jax.transfer_guard("disallow")`` so any accidental
implicit transfer fails loudly. Every ``train.log_every`` steps, at eval and checkpoint steps and at the
end it fetches the pending metrics with one explicit ``jax.device_get`` (outside the guard), which also
checks the loss (:mod:`jaxcnn.runner.divergence`): a NaN/inf loss (``first_bad_step``) or one past
``train.divergence_factor`` times its early value stops the run with :class:`DivergedError` before
anything of those steps is logged or saved, so the newest checkpoint is the last good one.

Before the model is built the run directory is checked (:func:`run_directory.check_run_dir`: a directory
with checkpoints needs ``resume`` or ``overwrite``; a resume, a config that agrees with the saved one);
``config.yaml`` is written once the run is accepted: after the restore and the input pipeline's check of
its saved position.

SIGINT and SIGTERM stop the run at a step boundary with a checkpoint of that step
(:mod:`jaxcnn.runner.interrupt`: :class:`Interrupted`); the processes of a job agree on the step. That
step's train record is written (the mean of the steps since the previous record) and its scheduled
evaluation is skipped: the checkpoint comes first, within a preemption's grace period.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from rich.console import Console

from jaxcnn.runner import display, metrics, optim, profiling, run_directory, setup, tensorboard
from jaxcnn.runner.checkpoint import Checkpointer, CheckpointError
from jaxcnn.runner.config import Config
from jaxcnn.runner.data import Dataset, TrainBatches, eval_batches
from jaxcnn.runner.divergence import DivergedError, DivergenceCheck, NonFiniteLossError, non_finite
from jaxcnn.runner.interrupt import Interrupted, StopSignals
from jaxcnn.runner.prepare import Prepared, prepare
from jaxcnn.runner.state import Graphs, TrainState
from jaxcnn.runner.step import dice, jit_eval_step

__all__ = ["DivergedError", "Interrupted", "NonFiniteLossError", "RunResult", "evaluate", "train"]


@dataclasses.dataclass
class RunResult:
    """What a finished run returns (also written to ``summary.json``).

    Attributes:
      state: the final train state (on the devices).
      graphs: the model's graphdefs (``nnx.merge(graphs.eval, state["params"], state["rest"])``).
      records: all ``metrics.jsonl`` records of this run (process 0; empty elsewhere).
      summary: the summary table's values.
    """

    state: TrainState
    graphs: Graphs
    records: list[dict[str, Any]]
    summary: dict[str, Any]


def evaluate(
    eval_step: Any, state: TrainState, data: Dataset, batch_size: int, mesh: Mesh
) -> dict[str, float]:
    """Test-set accuracy and mean loss (the padded last batch is masked out); for segmentation per voxel,
    plus ``eval_dice``: the foreground Dice coefficient over all held-out voxels (:func:`step.dice`)."""
    sums = []
    with jax.transfer_guard("disallow"):
        for images, labels, mask in eval_batches(data, batch_size, mesh):
            sums.append(eval_step(state, images, labels, mask))
    sums = jax.device_get(sums)
    total = {key: sum(float(s[key]) for s in sums) for key in sums[0]}
    result = {
        "eval_accuracy": total["correct"] / total["count"],
        "eval_loss": total["loss_sum"] / total["count"],
    }
    if "intersection" in total:
        result["eval_dice"] = dice(total["intersection"], total["predicted"], total["target"])
    return result


def _resume(
    cfg: Config, ckpt: Checkpointer | None, state: TrainState, say: Callable[[str, str], None]
) -> tuple[TrainState, dict[str, Any], int, dict[str, Any]]:
    """``(state, the input pipeline's saved position, first step, the checkpoint's notes)``: restored
    from the newest checkpoint with ``resume``, else as given from step 0; ``say(kind, line)`` prints a
    warning or a note.

    Raises:
      CheckpointError: no checkpoint can be read, or the newest one holds another model's or
        optimizer's state (:meth:`Checkpointer.restore`'s ``ValueError``, as one line).
    """
    if cfg.resume and ckpt is not None and ckpt.latest_step() is not None:
        try:
            state, data_state, step = ckpt.restore(state, warn=lambda line: say("warning", line))
        except ValueError as e:  # another model or optimizer: refused, no checkpoint touched
            raise CheckpointError(str(e)) from None
        return state, data_state, int(jax.device_get(state["step"])), ckpt.notes(step)
    if cfg.resume:
        say("note", "resume=true but there is no checkpoint yet; starting at step 0")
    return state, {}, 0, {}


def _train_record(cfg: Config, done: int, fetched: list[Any], dt: float, lr: float) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of the steps up to ``done`` (their metrics ``fetched``)."""
    return {
        "step": done,
        "loss": float(np.mean([m["loss"] for m in fetched])),
        "accuracy": float(np.mean([m["accuracy"] for m in fetched])),
        "step_time_s": dt,
        "images_per_s": cfg.train.batch_size / dt,
        "lr": lr,
    }


def _train_batches(cfg: Config, run: Prepared, start: int, data_state: dict[str, Any]) -> TrainBatches:
    """The run's training batches from step ``start``, or from a checkpoint's pipeline position
    ``data_state`` (which is checked to have been written for this data and seed)."""
    batches = TrainBatches(
        run.data,
        cfg.train.batch_size,
        cfg.seed,
        run.mesh,
        workers=cfg.data.workers,
        prefetch=cfg.data.prefetch,
        start=start,
    )
    if data_state:
        batches.set_state(data_state)
    return batches


def _banner(cfg: Config, run: Prepared, start: int, run_dir: str) -> list[str]:
    """What process 0 prints before the first step."""
    data = run.data
    lines = [
        f"[bold]jaxcnn[/bold] {cfg.model.name} on mesh {dict(run.mesh.shape)} ({jax.device_count()} devices, "
        f"{jax.process_count()} processes); {len(data.x_train)} train / {len(data.x_test)} test images "
        f"{data.image_shape}; steps {start}→{cfg.train.steps}; compiled in {run.compile_s:.1f}s; run dir "
        f"{run_dir}"
    ]
    if run.comm_note:
        lines.append(f"[yellow]note:[/yellow] no communication figure ({run.comm_note})")
    if run.time_note and run.predicted is not None:
        by_bytes = cfg.model.algorithms == "auto" and cfg.model.plan_objective == "time"
        lines.append(f"[yellow]note:[/yellow] {run.time_note}{'; auto planned by bytes' if by_bytes else ''}")
    return lines


def _every(done: int, total: int, every: int) -> bool:
    """Step ``done`` is the last one or a multiple of ``every`` (> 0)."""
    return done == total or (every > 0 and done % every == 0)


def train(
    cfg: Config,
    *,
    builder: setup.ModelBuilder | None = None,
    console: Console | None = None,
    callback: Callable[[int, TrainState], None] | None = None,
) -> RunResult:
    """Runs (or resumes) the training run ``cfg`` describes.

    Args:
      cfg: the validated config.
      builder: model builder with ``jaxcnn.models.build``'s signature (default: ``jaxcnn.models.build``).
      console: where process 0 prints (default: stdout).
      callback: called on every process as ``callback(steps_done, state)`` after each step's metrics,
        eval and checkpoint work (an exception it raises ends the run, e.g. to simulate preemption).

    Returns:
      The final state and summary.

    Raises:
      DivergedError: the loss became NaN/inf (:class:`NonFiniteLossError`) or grew past
        ``train.divergence_factor`` times its early value (the newest checkpoint is the last good one).
      ConfigError: the run directory cannot be used (unwritable; checkpoints there without ``resume``
        or ``overwrite``; a resume whose config differs from the saved one where it counts), or the
        mesh, the train state or the compiled step does not fit the devices.
      CheckpointError: a resume finds no readable checkpoint, or another model's; a save fails.
      Interrupted: SIGINT or SIGTERM stopped the run at a step boundary, with a checkpoint of that step
        (:mod:`jaxcnn.runner.interrupt`).
    """
    t_start = time.perf_counter()
    setup.init_distributed(cfg)  # first: jax.distributed installs a SIGTERM handler that StopSignals replaces
    with StopSignals(setup.is_main_process()) as stop:
        return _run(cfg, builder, console or Console(), callback, stop, t_start)


def _newest(ckpt: Checkpointer | None) -> str:
    """``"newest checkpoint: step N in DIR"``, or why there is none."""
    if ckpt is None:
        return "checkpoint.enabled is false, nothing saved"
    last = ckpt.latest_step()
    if last is None:
        return "no checkpoint saved yet"
    return f"newest checkpoint: step {last} in {ckpt.directory}"


def _run(
    cfg: Config,
    builder: setup.ModelBuilder | None,
    console: Console,
    callback: Callable[[int, TrainState], None] | None,
    stop: StopSignals,
    t_start: float,
) -> RunResult:
    """:func:`train` with the stop signals held."""
    main = setup.is_main_process()
    run_directory.check_run_dir(cfg)  # unwritable, another run's checkpoints, a mismatched resume: stop now
    run = prepare(cfg, builder)  # what cannot fit stops here, before the old run directory is touched
    mesh, data, total = run.mesh, run.data, cfg.train.steps
    lr = optim.schedule(cfg.optimizer, total)
    run_dir = run_directory.prepare_run_dir(cfg)
    ckpt = Checkpointer.for_run(run_dir, cfg.checkpoint)
    state, data_state, start, notes = _resume(
        cfg, ckpt, run.state, lambda kind, line: main and console.print(f"[yellow]{kind}:[/yellow] {line}")
    )
    eval_step = jit_eval_step(run.graphs, state, mesh, data.task)
    batches = _train_batches(cfg, run, start, data_state)
    run_directory.write_config(cfg)  # accepted: restored, and the saved pipeline position fits
    tb = tensorboard.for_run(cfg, run, run_dir, start)  # process 0, train.tensorboard: metrics as scalars
    log = metrics.MetricsLog(os.path.join(run_dir, "metrics.jsonl"), main, start if cfg.resume else None, tb)
    profiler = profiling.StepProfiler(
        cfg.train.profile_steps,
        profiling.trace_dir(run_dir),
        start,
        lambda line: main and console.print(f"[yellow]note:[/yellow] {line}"),
    )
    watch = DivergenceCheck(cfg.train.divergence_factor, notes.get("loss_reference"))
    for line in _banner(cfg, run, start, run_dir) if main else ():
        console.print(line)
    bar = display.ProgressBar(total, start, main, console)
    pending, step_times, last_eval, t_last = [], [], {}, time.perf_counter()
    stop.newest = _newest(ckpt)
    try:
        if stop.stop_at(start):  # a signal while the step compiled: nothing new to save
            raise Interrupted(stop.signum, start, f"nothing new to save ({stop.newest})", main)
        for step in range(start, total):
            profiler.before_step(step)
            with jax.transfer_guard("disallow"):
                images, labels = next(batches)  # global batch `step` (batches.step == step)
                state, step_metrics = run.compiled(state, images, labels)
            pending.append(step_metrics)
            done = step + 1
            stopping = stop.stop_at(done)  # the processes agree on it
            is_eval = not stopping and _every(done, total, cfg.train.eval_every)
            is_ckpt = ckpt is not None and (stopping or _every(done, total, cfg.checkpoint.every))
            if done % cfg.train.log_every == 0 or is_eval or is_ckpt or stopping:
                fetched, bad_step = jax.device_get((pending, state["first_bad_step"]))
                dt = (time.perf_counter() - t_last) / len(pending)
                if int(bad_step) >= 0:
                    raise non_finite(int(bad_step), ckpt)
                watch.check(done - len(fetched) + 1, [float(m["loss"]) for m in fetched], ckpt)
                step_times += [dt] * len(pending)
                record = _train_record(cfg, done, fetched, dt, float(lr(step)))
                log.write(record)
                bar.update(done, record)
                pending = []
                if is_eval:
                    last_eval = evaluate(eval_step, state, data, cfg.train.eval_batch_size, mesh)
                    log.write({"step": done, **last_eval})
                    bar.print(_eval_line(done, last_eval))
                if is_ckpt:
                    # the pipeline's position (== done), and the run's early loss for a resumed run's check
                    ckpt.save(done, state, batches.get_state(), {"loss_reference": watch.reference})
                    stop.newest = _newest(ckpt)
            profiler.after_step(done, state)
            if callback is not None:
                callback(done, state)
            if stopping:
                saved = f"checkpoint {done} saved" if ckpt else stop.newest
                raise Interrupted(stop.signum, done, saved, main)
            if not pending:  # fetched: the next interval starts now
                t_last = time.perf_counter()
    finally:
        profiler.close()
        log.close()
        bar.close()
        batches.close()  # the grain iterator's threads and worker processes
        if ckpt is not None:
            ckpt.close()
    if not last_eval:  # nothing left to train (a resumed, finished run): still report the test accuracy
        last_eval = evaluate(eval_step, state, data, cfg.train.eval_batch_size, mesh)
    summary = _summary(cfg, run, run_dir, log.records, last_eval, step_times, time.perf_counter() - t_start)
    if main:
        metrics.write_json(os.path.join(run_dir, "summary.json"), summary)
        metrics.plot(log.records, run_dir)
        console.print(display.summary_table(_summary_rows(summary)))
    return RunResult(state, run.graphs, log.records, summary)


def _eval_line(done: int, result: dict[str, float]) -> str:
    dice_text = f", Dice {result['eval_dice']:.4f}" if "eval_dice" in result else ""
    return (
        f"step {done}: test accuracy {result['eval_accuracy']:.4f}, loss {result['eval_loss']:.4f}{dice_text}"
    )


def _summary(
    cfg: Config,
    run: Prepared,
    run_dir: str,
    records: list[dict[str, Any]],
    last_eval: dict[str, float],
    step_times: list[float],
    wall_time_s: float,
) -> dict[str, Any]:
    """The run's ``summary.json``; the mean step time skips the first logging interval (first
    execution, caches warming up)."""
    steady = step_times[cfg.train.log_every :] or step_times
    return {
        "final_step": cfg.train.steps,
        "final_eval_accuracy": last_eval.get("eval_accuracy"),
        "final_eval_loss": last_eval.get("eval_loss"),
        "final_eval_dice": last_eval.get("eval_dice"),
        "final_train_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "wall_time_s": wall_time_s,
        "compile_time_s": run.compile_s,
        "mean_step_time_s": float(np.mean(steady)) if steady else None,
        "images_per_s": cfg.train.batch_size / float(np.mean(steady)) if steady else None,
        "comm_bytes_per_step_max_device": run.comm_bytes,
        "predicted_comm_bytes_per_step_max_device": None
        if run.predicted is None
        else run.predicted.max_bytes,
        "median_step_time_s": float(np.median(steady)) if steady else None,
        "predicted_step_time_s": None if run.predicted_time is None else run.predicted_time.seconds,
        "mesh": dict(run.mesh.shape),
        "devices": jax.device_count(),
        "run_dir": run_dir,
    }


def _summary_rows(s: dict[str, Any]) -> dict[str, str]:
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    def ms(seconds: float | None) -> str:
        return fmt(None if seconds is None else seconds * 1e3, ".2f") + " ms"

    dice_row = (
        {} if s.get("final_eval_dice") is None else {"final test Dice": fmt(s["final_eval_dice"], ".4f")}
    )
    return {
        **dice_row,
        "final test accuracy": fmt(s["final_eval_accuracy"], ".4f"),
        "final test loss": fmt(s["final_eval_loss"], ".4f"),
        "final train loss": fmt(s["final_train_loss"], ".4f"),
        "steps": str(s["final_step"]),
        "wall time": fmt(s["wall_time_s"], ".1f") + " s",
        "compile time": fmt(s["compile_time_s"], ".1f") + " s",
        "mean step time": ms(s["mean_step_time_s"]),
        "median step time": ms(s["median_step_time_s"]),
        "predicted step time": ms(s["predicted_step_time_s"]),
        "throughput": fmt(s["images_per_s"], ",.0f") + " images/s",
        "comm bytes / step (max device)": fmt(s["comm_bytes_per_step_max_device"], ",.0f"),
        "predicted comm bytes / step": fmt(s["predicted_comm_bytes_per_step_max_device"], ",.0f"),
        "mesh": " ".join(f"{k}={v}" for k, v in s["mesh"].items()),
        "run dir": s["run_dir"],
    }
