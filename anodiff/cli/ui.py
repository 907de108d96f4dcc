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
from rich.table import Table

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


def exit_code(failures) -> int:
    """0 when every case succeeded; 2 when cases failed on bad input; 1 when one hit an unexpected error (a bug)."""
    if not failures:
        return 0
    return 1 if any(getattr(o, "unexpected", False) for o in failures) else 2


def end_with_failures(failures: list[tuple[str, str]], total: int, what: str, code: int) -> None:
    """Exit with ``code`` when cases failed: one line for a single case, else one per case and a summary."""
    if not failures:
        return
    if total == 1:
        raise fail(failures[0][1], code=code)
    for case, error in failures:
        stderr.print(f"[red]{what}[/] {case}: {error}", highlight=False, soft_wrap=True)
    raise fail(f"{len(failures)} of {total} case(s) {what}; the others were written", code=code)


def print_report(report) -> None:
    """The report's tables on stdout, as rich tables (summary.md holds the same, in Markdown)."""
    stdout.print(f"[bold]{report.title}[/]")
    for table in report.tables:
        rendered = Table(title=table.title)
        for column in table.columns:
            rendered.add_column(column)
        for row in table.rows:
            rendered.add_row(*row)
        stdout.print(rendered)
