"""A report as one self-contained HTML file: tables, every figure inline (base64 PNG), settings and versions.

Nothing in the page is fetched: no script link, no stylesheet link, no remote image
(the 3D viewer's NiiVue and volumes are inline, :mod:`anodiff.evaluation.viewer`),
so it opens offline and survives being mailed or attached to a paper's review.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Protocol

from anodiff.evaluation import viewer


class Page(Protocol):
    """What a page is drawn from (an :class:`anodiff.evaluation.report.Report`)."""

    title: str
    notes: list[str]
    tables: list  # of Table: title, columns, rows, note
    figures: dict

MAX_CASE_FIGURES = 24  # per-case figures inlined; a cohort's others stay in overlays/
MAX_VIEWERS = 12  # cases with a 3D viewer (their volumes embedded: about 1 MB each)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
.note { color: #555; }
"""


def to_html(report: Page, images: dict[str, Path], case_figures: list[Path]) -> str:
    """The page: title, notes, tables, the report's ``images`` ({caption: PNG}), up to
    ``MAX_CASE_FIGURES`` of ``case_figures``, then the settings and versions the figures came from."""
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    parts += [f"<p>{_inline(note)}</p>" for note in report.notes]
    for table in report.tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.note:
            parts.append(f"<p class='note'>{_inline(table.note)}</p>")
        parts.append(_table(table.columns, table.rows))
    if images:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(path, caption) for caption, path in images.items()]
    volumes = [path.with_name(path.stem + viewer.SUFFIX) for path in case_figures]
    volumes = [path for path in volumes if path.is_file()][:MAX_VIEWERS]
    if volumes:
        parts.append(f"<h2>3D viewer ({len(volumes)} case(s): three linked planes and a render; scroll to move "
                     "through slices, drag to rotate)</h2>")
        parts += [viewer.viewer_section(path, index, path.name[:-len(viewer.SUFFIX)])
                  for index, path in enumerate(volumes)]
        parts.append(viewer.viewer_script())
    if case_figures:
        shown = case_figures[:MAX_CASE_FIGURES]
        parts.append(f"<h2>Cases ({len(shown)} of {len(case_figures)} shown)</h2>")
        parts += [_figure(path, path.stem) for path in shown]
    settings = _settings(report.figures)
    if settings:
        parts += ["<h2>Settings and versions</h2>", _table(("setting", "value"), settings)]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(report.title)}"
            f"</title><style>{STYLE}{viewer.STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Markdown's `code` and *emphasis* of the report's notes, as HTML."""
    escaped = html.escape(text).split("`")
    escaped = [f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(escaped)]
    pieces = "".join(escaped).split("*")
    return "".join(f"<em>{s}</em>" if i % 2 and i < len(pieces) - 1 else s for i, s in enumerate(pieces))


def _settings(figures: dict) -> list[tuple[str, str]]:
    """(key, value) rows of the sections a report records: anomaly, sampler, the model's config, versions."""
    rows = []
    for section in ("anomaly", "sampler", "settings", "versions"):
        for key, value in _flat(figures.get(section) or {}, section):
            rows.append((key, value if isinstance(value, str) else json.dumps(value)))
    return rows


def _flat(values: dict, prefix: str):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value
