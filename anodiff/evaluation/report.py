"""One typed report, rendered five ways: terminal (by the CLI), Markdown, JSON, CSV and one HTML page.

A method's evaluation builds a :class:`Report`: its figures (``report.json``), one
row per case (``per_case.csv``), and the tables and notes every rendering shows,
already formatted, so the terminal, ``summary.md`` and ``report.html`` cannot
disagree. The curves and histograms are drawn from ``report.json`` alone
(:mod:`.plots`), so a report folder can be re-rendered without running a network.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anodiff.evaluation.html import to_html
from anodiff.evaluation.plots import detection_figures
from anodiff.outputs import replaced_atomically


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    note: str = ""  # what the figures mean, shown under the title in Markdown

    def to_markdown(self) -> str:
        """``## title``, the note, then the table."""
        lines = [f"## {self.title}", ""] + ([self.note, ""] if self.note else [])
        lines += ["| " + " | ".join(self.columns) + " |", "|" + " --- |" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


@dataclass(frozen=True)
class Report:
    title: str
    notes: list[str]  # paragraphs under the title
    tables: list[Table]
    figures: dict  # report.json
    rows: list[dict]  # per_case.csv, one per case
    # figures (report.json's content), folder -> {caption: PNG}: the curves this kind of report draws
    draw: Callable[[dict, Path], dict[str, Path]] = detection_figures

    def to_markdown(self, images: dict[str, str] | None = None, case_figures: list[str] | None = None) -> str:
        """The tables, then ``images`` ({caption: path relative to the Markdown file}) and ``case_figures``."""
        lines = [f"# {self.title}", ""]
        for note in self.notes:
            lines += [note, ""]
        for table in self.tables:
            lines += [table.to_markdown(), ""]
        if images:
            lines += ["## Figures", ""] + [f"![{caption}]({path})" for caption, path in images.items()] + [""]
        if case_figures:
            lines += ["## Cases", ""] + [f"![{Path(path).stem}]({path})" for path in case_figures] + [""]
        return "\n".join(lines)

    def to_csv(self) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, folder: Path) -> list[Path]:
        """report.json, per_case.csv, the figures (figures/), summary.md and report.html in ``folder``, each
        replaced atomically; the per-case figures already in ``folder/overlays`` join the Markdown and HTML."""
        folder.mkdir(parents=True, exist_ok=True)
        images = self.draw(self.figures, folder / "figures")
        cases = sorted(p for p in (folder / "overlays").glob("*.png")) if (folder / "overlays").is_dir() else []
        relative = lambda path: path.relative_to(folder).as_posix()  # noqa: E731
        # report.json last: a folder holding it is a finished report (an interrupted evaluation is not).
        texts = {"per_case.csv": self.to_csv(),
                 "summary.md": self.to_markdown({c: relative(p) for c, p in images.items()},
                                                [relative(p) for p in cases]),
                 "report.html": to_html(self, images, cases),
                 "report.json": json.dumps(self.figures, indent=2, default=float)}
        for name, text in texts.items():
            with replaced_atomically(folder / name) as tmp:
                tmp.write_text(text, encoding="utf-8", newline="")
        return [folder / name for name in texts]


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"
