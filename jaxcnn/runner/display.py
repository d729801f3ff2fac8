"""Console output on process 0: a rich progress bar while training and a summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class ProgressBar:
    """Steps done, loss, throughput; silent unless ``enabled`` (process 0).

    Args:
      total: last step of the run.
      start: first step (a resumed run starts part-way).
      enabled: draw at all.
      console: where to draw (default: stdout).
    """

    def __init__(self, total: int, start: int, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console()
        if not enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]} img/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", acc="-", ips="-")
        self.progress.start()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        """Moves the bar to ``step``; ``record`` (a train metrics record) refreshes the fields."""
        if not self.enabled:
            return
        fields = {}
        if record is not None:
            fields = {
                "loss": f"{record['loss']:.4f}",
                "acc": f"{record['accuracy']:.3f}",
                "ips": f"{record['images_per_s']:,.0f}",
            }
        self.progress.update(self.task, completed=step, **fields)

    def print(self, message: str) -> None:
        """Prints a line above the bar."""
        if self.enabled:
            self.progress.console.print(message)

    def close(self) -> None:
        """Stops drawing."""
        if self.enabled:
            self.progress.stop()


def summary_table(rows: dict[str, str]) -> Table:
    """A two-column rich table of the run summary."""
    table = Table(title="jaxcnn run summary", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, v)
    return table
