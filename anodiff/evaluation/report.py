"""One typed report, rendered four ways: terminal (by the CLI), Markdown, JSON and CSV.

A method's evaluation builds a :class:`Report`: its figures (``report.json``), one
row per case (``per_case.csv``), and the tables and notes every rendering shows,
already formatted, so the terminal and ``summary.md`` cannot disagree.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from anodiff.io import replaced_atomically


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    note: str = ""  # what the figures mean, shown under the title in Markdown


@dataclass(frozen=True)
class Report:
    title: str
    notes: list[str]  # paragraphs under the title
    tables: list[Table]
    figures: dict  # report.json
    rows: list[dict]  # per_case.csv, one per case

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for note in self.notes:
            lines += [note, ""]
        for table in self.tables:
            lines += [f"## {table.title}", ""]
            if table.note:
                lines += [table.note, ""]
            lines += ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
            lines += ["| " + " | ".join(row) + " |" for row in table.rows]
            lines.append("")
        return "\n".join(lines)

    def to_csv(self) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, folder: Path) -> list[Path]:
        """report.json, per_case.csv and summary.md in ``folder``, each replaced atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        texts = {"report.json": json.dumps(self.figures, indent=2, default=float), "per_case.csv": self.to_csv(),
                 "summary.md": self.to_markdown()}
        for name, text in texts.items():
            with replaced_atomically(folder / name) as tmp:
                tmp.write_text(text, encoding="utf-8", newline="")
        return [folder / name for name in texts]


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"
