"""Command line: ``jaxcnn train CONFIG.yaml [key=value ...]``, ``jaxcnn eval|predict|launch|plan ...``."""

from __future__ import annotations

import sys

#: name -> ("module" (its ``main(argv)``) or "module:function", one-line description).
COMMANDS = {
    "train": ("jaxcnn.runner.cli", "Train a model from a YAML config."),
    "eval": (
        "jaxcnn.runner.inference_cli:eval_main",
        "Evaluate a trained run's checkpoint on its test split.",
    ),
    "predict": (
        "jaxcnn.runner.inference_cli:predict_main",
        "Predict with a trained run's checkpoint: .npz, .npy or an image folder -> .npz.",
    ),
    "launch": ("jaxcnn.runner.launch", "Run a multi-process training job on this machine (CPU devices)."),
    "plan": (
        "jaxcnn.planner.cli",
        "Plan per-layer algorithms for a network under a memory budget.",
    ),
    "data": ("jaxcnn.runner.data.cli", "Prepare training data: data convert FOLDER OUT.array_record."),
    "calibrate": (
        "jaxcnn.timing.cli",
        "Time this backend's collectives and local compute; save its timing profile.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``jaxcnn COMMAND ...`` to the command's ``main(argv)``."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
        print("usage: jaxcnn COMMAND [args]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    return int(getattr(importlib.import_module(module), function or "main")(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
