"""The one progress callback of the library: ``progress(done, total, info="")``.

Long loops take ``progress: Progress | None`` and call it after each unit of
work; the CLI turns it into a rich progress bar. The library never draws one.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, info: str = "") -> None: ...


def staged(progress: Progress | None, stage: str) -> Progress | None:
    """``progress`` with the stage's name before its message (unchanged for an empty name)."""
    if progress is None or not stage:
        return progress
    return lambda done, total, info="": progress(done, total, f"{stage}: {info}")
