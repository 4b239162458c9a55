"""One progress-bar factory so every long step (training, calibration, compilation, bench)
looks the same and goes to stderr, leaving stdout for tables and JSON."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

stderr_console = Console(stderr=True)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled (silent) when not a terminal or when asked."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled or not sys.stderr.isatty() and not _force_progress(),
        transient=False,
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("QEXPORT_PROGRESS") == "1"


def say(message: str) -> None:
    """A status line on stderr (kept apart from the report on stdout)."""
    stderr_console.print(message, highlight=False)
