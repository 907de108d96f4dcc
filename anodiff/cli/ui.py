"""Console plumbing shared by the commands: logging, progress bars, errors.

Results go to stdout; logs, progress and errors go to stderr, so a command's
output can be piped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from anodiff.progress import Progress as ProgressFn

# Wide tables when piped or captured (rich would fall back to 80 columns).
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=stderr, show_path=False, show_time=False, rich_tracebacks=True,
                          tracebacks_show_locals=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("anodiff").setLevel(level)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red line to stderr and return the Exit to raise."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def progress_bar(description: str, *, transient: bool = False,
                 disable: bool = False) -> Iterator[ProgressFn]:
    """A rich progress bar on stderr, exposed to the library as ``progress(done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
        transient=transient,
        disable=disable,
    ) as bar:
        task = bar.add_task(description, total=None, info="")

        def update(done: int, total: int, info: str = "") -> None:
            bar.update(task, completed=done, total=total, info=info)

        yield update
